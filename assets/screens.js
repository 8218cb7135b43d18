/* WriteVue dashboard screens: TV pages and clock, a day's figures on a tap.
 *
 * Served from /assets by the dashboard server itself. The dashboard's HTML lives in
 * Panel's shadow roots, so elements are looked up through them. Nothing here talks to
 * the server: the TV's pages rotate on the wall clock (every screen showing the same
 * dashboard turns its page together) and the clock is the viewer's local time. When
 * the page's connection to the server is lost (the server restarted), a banner says so
 * while Bokeh reconnects, and says to reload if it gives up.
 */
(function () {
  "use strict";

  function findAll(root, selector, out) {
    root.querySelectorAll(selector).forEach(function (e) { out.push(e); });
    root.querySelectorAll("*").forEach(function (e) {
      if (e.shadowRoot) findAll(e.shadowRoot, selector, out);
    });
    return out;
  }

  // -- TV: the cards that fit, a page at a time; the clock ------------------------------

  var screen = null, layout = "", pages = 1, perPage = 0;

  function cardsOf(el) { return Array.prototype.slice.call(el.querySelectorAll(".wv-card")); }

  function measure(cards) {
    // Every card shown, then the ones whose bottom is on screen make one page's worth.
    cards.forEach(function (c) { c.classList.remove("wv-off"); });
    var bottom = window.innerHeight - 8, fit = 0;
    for (var i = 0; i < cards.length; i++) {
      if (cards[i].getBoundingClientRect().bottom <= bottom) fit = i + 1; else break;
    }
    perPage = Math.max(fit, 1);
    pages = Math.ceil(cards.length / perPage);
  }

  function tv() {
    if (!screen || !screen.isConnected) {
      screen = findAll(document, ".wv-tv-screen", [])[0] || null;
      layout = "";
    }
    if (!screen) return;
    var cards = cardsOf(screen);
    var key = [window.innerWidth, window.innerHeight, cards.length].join("x");
    if (key !== layout || !screen.dataset.measured) {
      measure(cards);
      layout = key;
      screen.dataset.measured = "1";
    }
    var rotate = Math.min(Math.max(parseInt(screen.dataset.rotate, 10) || 20, 5), 300);
    var page = Math.floor(Date.now() / 1000 / rotate) % pages;
    cards.forEach(function (c, i) {
      c.classList.toggle("wv-off", Math.floor(i / perPage) !== page);
    });
    screen.dataset.page = String(page + 1);
    screen.dataset.pages = String(pages);
    var clock = screen.querySelector(".wv-clock");
    if (clock) {
      var now = new Date();
      clock.textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      clock.setAttribute("datetime", now.toISOString());
    }
  }

  // -- a day's figures on a tap (and a click): the band's title in a box ------------------

  function tip(event) {
    var path = event.composedPath ? event.composedPath() : [event.target];
    var band = path[0];
    var days = band && band.parentElement;
    if (!days || !days.classList || !days.classList.contains("wv-days")) {
      findAll(document, ".wv-tip", []).forEach(function (t) { t.remove(); });
      return;
    }
    var plot = days.parentElement, text = band.getAttribute("title") || "";
    var box = plot.querySelector(".wv-tip");
    if (!box) {
      box = document.createElement("div");
      box.className = "wv-tip";
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      plot.appendChild(box);
    }
    box.textContent = text;
    var plotBox = plot.getBoundingClientRect(), bandBox = band.getBoundingClientRect();
    var x = bandBox.left + bandBox.width / 2 - plotBox.left;
    box.style.left = Math.max(0, Math.min(x - box.offsetWidth / 2, plotBox.width - box.offsetWidth)) + "px";
    findAll(document, ".wv-tip", []).forEach(function (t) { if (t !== box) t.remove(); });
  }

  // -- the connection to the server: lost, back, or given up on ---------------------------

  var LOST = "The connection to the dashboard was lost.";
  var banner = null;

  function say(text, reload) {
    if (!banner) {
      banner = document.createElement("div");
      banner.className = "wv-connection";
      banner.setAttribute("role", "alert");
    }
    banner.textContent = text;
    if (reload) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = "Reload";
      button.addEventListener("click", function () { location.reload(); });
      banner.appendChild(document.createTextNode(" "));
      banner.appendChild(button);
    }
    if (!banner.isConnected) document.body.appendChild(banner);
  }

  function watch(doc) {
    // Bokeh tries again at once, then after 2, 4, 8 and 16 s (timeout null: no more tries);
    // a reconnected page pulls a new session's document, so its figures and buttons work.
    doc.on_event("connection_lost", function (_, event) {
      if (event.timeout == null) say(LOST + " Reload the page.", true);
      else say(LOST + " Reconnecting\u2026", false);
    });
    doc.on_event("client_reconnected", function () {
      if (banner) banner.remove();
    });
  }

  function whenLoaded(tries) {
    var docs = window.Bokeh && window.Bokeh.documents;
    if (docs && docs.length) docs.forEach(watch);
    else if (tries > 0) window.setTimeout(function () { whenLoaded(tries - 1); }, 250);
  }

  whenLoaded(240);  // the document arrives over the socket after this script runs
  document.addEventListener("click", tip, true);
  if (/(^|[?&])tv=(1|true|yes)(&|$)/i.test(location.search.slice(1))) {
    window.setInterval(tv, 250);
  }
})();
