/* shopstream dashboard pages' shared DOM helpers (loaded before app.js and topics.js). */
"use strict";

function byId(id) {
  return document.getElementById(id);
}

/** Creates an element; attrs: {className, dataset: {...}, title, ...}, children: nodes or strings. */
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) {
      continue;
    }
    if (key === "className") {
      node.className = value;
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children || []) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function card(panel) {
  return document.querySelector(`.card[data-panel="${panel}"]`);
}
