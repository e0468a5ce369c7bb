// Live updates: when the server says the cluster changed, the page's main part is fetched
// again and swapped in place (no reload).  Forms that ask for confirmation ask first.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var pending = null;

  function busy() {
    var active = document.activeElement;
    return active && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  function refresh() {
    pending = null;
    if (busy()) { pending = setTimeout(refresh, 1000); return; }
    fetch(window.location.href, {
      headers: { "X-Jobsd-Partial": "1" }, credentials: "same-origin", cache: "no-store"
    })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null) {
          main.innerHTML = html;
          document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || "0") + 1);
        }
      })
      .catch(function () {});
  }

  if (window.EventSource && document.body.dataset.events) {
    var source = new EventSource(document.body.dataset.events);
    source.addEventListener("open", function () { live.classList.add("on"); });
    source.addEventListener("error", function () { live.classList.remove("on"); });
    source.addEventListener("change", function () {
      if (pending === null) { pending = setTimeout(refresh, 200); }
    });
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
