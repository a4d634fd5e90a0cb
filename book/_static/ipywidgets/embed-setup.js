// Loaded before embed-amd.js on the pages that show widgets (see _config.yml, nb_ipywidgets_js).
//
// 1. The HTML manager loads its Font Awesome fonts from its webpack public path, which it takes
//    from the URL RequireJS gives its module (by default relative to the page) or from
//    `window.__jupyter_widgets_assets_path__`. The fonts sit next to this script, in
//    _static/ipywidgets/: point both there.
var here = new URL(".", document.currentScript.src).href;  // ends with "/"
window.__jupyter_widgets_assets_path__ = here;
window.requirejs.config({paths: {"@jupyter-widgets/html-manager/dist": here.slice(0, -1)}});

// 2. ipywidgets 8 typesets widget labels with the MathJax 2 API, `MathJax.Hub.Queue(["Typeset",
//    MathJax.Hub, element])`; the book loads MathJax 3, which has no `Hub`. Map that one call onto
//    MathJax 3's `typesetPromise`. MathJax is a deferred script, so it exists by DOMContentLoaded,
//    and the widgets are drawn later, on `load`.
window.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (mj && !mj.Hub) {
    mj.Hub = {
      Queue: function (command) {
        var element = command && command[2];
        if (element && mj.typesetPromise) {
          return mj.typesetPromise([element]).catch(function (err) { console.warn(err); });
        }
      },
    };
  }
});
