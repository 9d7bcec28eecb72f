// The catalog page's live part: every 2 seconds it is fetched again
// (?fragment, rendered by the server like the page) and swapped in when it
// changed, keeping the projection queries a reader opened.
(function () {
  "use strict";
  var main = document.getElementById("catalog");
  var live = document.getElementById("live");
  var last = null;

  function show(state, text) {
    live.className = "live " + state;
    live.textContent = text;
  }

  function swap(html) {
    if (html === last) {
      return;
    }
    var open = [];
    main.querySelectorAll("details[open][data-key]").forEach(function (d) { open.push(d.dataset.key); });
    main.innerHTML = html;
    last = html;
    main.querySelectorAll("details[data-key]").forEach(function (d) {
      if (open.indexOf(d.dataset.key) >= 0) {
        d.open = true;
      }
    });
  }

  function poll() {
    fetch("?fragment", { cache: "no-store" })
      .then(function (r) {
        return r.text().then(function (html) {
          swap(html);
          var at = new Date().toLocaleTimeString();
          if (r.ok) {
            show("ok", "live · updated " + at);
          } else {
            show("down", "catalog unavailable · checked " + at);
          }
        });
      })
      .catch(function () { show("down", "sidecar unreachable · retrying"); })
      .finally(function () { setTimeout(poll, 2000); });
  }

  if (document.getElementById("unavailable")) {
    show("down", "catalog unavailable");
  } else {
    show("ok", "live");
  }
  setTimeout(poll, 2000);
})();
