// Answers as Markdown, made safe: marked turns the text into HTML, DOMPurify keeps only inert markup, and
// the result is inserted as nodes. Both libraries are served by this server (/vendor, from npm); `?v=` is
// their version in api/static/vendor/manifest.json (a test holds the two together), so an upgrade is a new URL.

import { Marked } from "/vendor/marked/marked.esm.js?v=18.3.0";
import DOMPurify from "/vendor/dompurify/purify.es.js?v=3.5.0";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

// HTML that the model writes in its answer is shown as it was written, as text: the page never takes an
// answer's markup for its own. Markdown's own constructs (a link, an image) still pass DOMPurify below.
const parser = new Marked({ gfm: true, breaks: true, async: false, renderer: { html: ({ text }) => escapeHtml(text) } });

// And whatever marked makes: no scripts, styles, forms or frames, no event handlers and no `javascript:`
// URLs (DOMPurify's defaults), and links open in a new tab with no opener and no referrer.
const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** The Markdown text as sanitized nodes, ready to be put in the page. */
export function markdown(text) {
  return DOMPurify.sanitize(parser.parse(text), PURIFY);
}

/**
 * Show `text` as Markdown in `target`, at most once an animation frame while an answer streams in: the
 * whole text is parsed each time, since a piece may close what an earlier one opened (a code fence, a list).
 */
export function markdownView(target) {
  let text = "";
  let scheduled = false;
  const draw = () => {
    scheduled = false;
    target.replaceChildren(markdown(text));
  };
  return {
    set(value) {
      text = value;
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(draw);
      }
    },
    /** Draw now (the answer has ended). */
    flush() {
      draw();
    },
    get text() {
      return text;
    },
  };
}
