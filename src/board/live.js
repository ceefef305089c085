// lbmanager's status page: keeps the view current without a reload. Every second it fetches
// the same view's fragment (HTML the server rendered, every value escaped there) and puts it in
// place of the board. Nothing from the data is evaluated; the page allows no other script.
(function () {
  "use strict";
  var board = document.getElementById("board");
  if (!board) {
    return;
  }
  var url = new URL(window.location.href);
  url.searchParams.set("fragment", "1");
  function tick() {
    fetch(url, { cache: "no-store" })
      .then(function (answer) {
        if (answer.status === 404) {
          // The load balancer is no longer managed (its keys are gone): say so, stop asking.
          document.body.setAttribute("data-live", "gone");
          return null;
        }
        if (!answer.ok) {
          throw new Error(answer.status);
        }
        return answer.text();
      })
      .then(function (html) {
        if (html !== null) {
          board.innerHTML = html;
          document.body.setAttribute("data-live", "ok");
        }
      })
      .catch(function () {
        // lbmanager restarting, or the network: say so, and try again.
        document.body.setAttribute("data-live", "lost");
      })
      .then(function () {
        if (document.body.getAttribute("data-live") !== "gone") {
          window.setTimeout(tick, 1000);
        }
      });
  }
  window.setTimeout(tick, 1000);
})();
