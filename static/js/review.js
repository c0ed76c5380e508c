// The review screen's keyboard and small comforts. Everything that matters happens on the server:
// without this file the same forms post and redirect.
(function () {
  "use strict";

  const CHOICE_KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", "3": "tie", "4": "both_bad" };

  const form = () => document.getElementById("review");

  // htmx wires up swapped-in content when it settles, ~20 ms after the swap; a key pressed in between
  // would post the form without htmx (it still works, but as a full page load).
  function ready(f) {
    if (window.htmx) window.htmx.process(f);
    return f;
  }

  function isTyping(target) {
    return Boolean(target.closest && target.closest("textarea, select, input:not([type=checkbox]):not([type=radio])"));
  }

  function say(text) {
    const notice = form() && form().querySelector(".notice[role=status]");
    if (!notice) return;
    notice.textContent = text;
    notice.hidden = false;
  }

  function choose(value) {
    const radio = form().querySelector(`input[name=choice][value="${value}"]`);
    if (radio) radio.checked = true;
  }

  function press(key) {
    const button = ready(form()).querySelector(`button[data-key="${key}"]`);
    if (button) button.click();
  }

  function closeDrawers() {
    document.querySelectorAll("details.drawer[open]").forEach((drawer) => drawer.removeAttribute("open"));
  }

  function submit() {
    const f = form();
    if (!f.querySelector("input[name=choice]")) return;
    if (!f.querySelector("input[name=choice]:checked")) {
      say("Choose A, B, tie or both bad first (keys 1–4).");
      return;
    }
    ready(f).requestSubmit();
  }

  document.addEventListener("keydown", (event) => {
    if (!form() || event.altKey || event.isComposing) return;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && isTyping(event.target)) {
      event.preventDefault();
      submit();
      return;
    }
    if (event.ctrlKey || event.metaKey) return;
    if (isTyping(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.key === "Enter" && event.target.closest("button, summary, a")) return; // their own action
    if (event.key in CHOICE_KEYS) choose(CHOICE_KEYS[event.key]);
    else if (event.key === "Enter") submit();
    else if (event.key === "s" || event.key === "u") press(event.key);
    else if (event.key === "?") document.getElementById("keys-help").toggleAttribute("open");
    else if (event.key === "Escape") closeDrawers();
    else return;
    event.preventDefault();
  });

  // A summary clicked with the mouse keeps the focus, and Enter would fold it again instead of submitting the
  // answer. After a pointer click (detail > 0; Enter or Space on a focused summary sends detail 0) the keys
  // belong to the pair again.
  document.addEventListener("click", (event) => {
    const summary = event.target.closest && event.target.closest("summary");
    if (summary && event.detail > 0 && form()) summary.blur();
  });

  // A competency's flags are one answer: irrelevant or not supported, never both.
  document.addEventListener("change", (event) => {
    const box = event.target;
    if (!box.matches(".flags input[type=checkbox]") || !box.checked) return;
    box.closest(".flags").querySelectorAll("input[type=checkbox]").forEach((other) => {
      if (other !== box) other.checked = false;
    });
  });

  // Hovering or focusing a competency lights up its terms in the abstracts.
  function light(event, on) {
    const competency = event.target.closest && event.target.closest(".competency[data-stems]");
    if (!competency || !form()) return;
    const stems = competency.dataset.stems.split(" ").filter(Boolean);
    competency.classList.toggle("lit", on);
    form().querySelectorAll("mark.ev").forEach((mark) => {
      if (stems.some((stem) => mark.dataset.term.startsWith(stem))) mark.classList.toggle("hot", on);
    });
  }
  document.addEventListener("mouseover", (event) => light(event, true));
  document.addEventListener("mouseout", (event) => light(event, false));
  document.addEventListener("focusin", (event) => light(event, true));
  document.addEventListener("focusout", (event) => light(event, false));

  document.addEventListener("htmx:beforeSwap", (event) => {
    // A session that ran out answers with the login page: go there instead of swapping it in.
    const url = event.detail.xhr.responseURL;
    const login = form() && form().dataset.loginUrl;
    if (login && url && new URL(url).pathname === login) {
      event.detail.shouldSwap = false;
      window.location.assign(url);
    }
  });

  // A new pair starts at the top, uncovered, with no focus left on a button of the last one.
  document.addEventListener("htmx:afterSwap", () => {
    closeDrawers();
    window.scrollTo({ top: 0 });
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  });

  document.addEventListener("htmx:responseError", (event) => {
    say(`The server answered ${event.detail.xhr.status}; nothing was saved. Reload the page to continue.`);
  });
  document.addEventListener("htmx:sendError", () => {
    say("The server could not be reached; nothing was saved. Try again.");
  });
})();
