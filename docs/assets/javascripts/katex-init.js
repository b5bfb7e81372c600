// Typeset the formulas of every page with the KaTeX files served by the site itself (no network).
// pymdownx.arithmatex (generic mode) leaves \( ... \) and \[ ... \] in <span class="arithmatex">;
// the tutorials' Markdown cells write $ ... $. mkdocs-material calls this on every page load.
function typesetMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
    ],
    ignoredClasses: ["highlight", "jp-InputArea", "jp-OutputArea"],  // never inside code or outputs
    throwOnError: false,
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => typesetMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => typesetMath(document.body));
}
