// The MkDocs theme's page settings (base_url, keyboard shortcuts), read from this script tag's data
// attributes instead of the theme's inline <script>, which a strict Content-Security-Policy blocks.
(function () {
  "use strict";
  var script = document.currentScript;
  window.base_url = script.dataset.baseUrl;
  window.shortcuts = JSON.parse(script.dataset.shortcuts);
})();
