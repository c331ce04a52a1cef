// The playground: builds a request for the chosen mode, streams the answer (server-sent events in
// OpenAI's format) into the output with syntax highlighting.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const HOLE = "<FILL>";
  const HELP = {
    complete: "Describe the code; optionally start it below and the model continues. " +
      "With no description, the code below is simply continued.",
    infill: "Write " + HOLE + " where the missing code goes; the model fills the hole " +
      "(needs a model with fill-in-the-middle tokens).",
    translate: "Paste code below; it is translated to the language chosen.",
  };
  const CODE_LABEL = {
    complete: "Start of the code (optional)",
    infill: "Code with a " + HOLE + " hole",
    translate: "Code to translate",
  };

  let controller = null;
  let result = { before: "", text: "", after: "" };

  function mode() { return document.querySelector('input[name="mode"]:checked').value; }

  function showMode() {
    const m = mode();
    $("mode-help").textContent = HELP[m];
    $("code-label").textContent = CODE_LABEL[m];
    $("description").disabled = m === "infill";
    $("description-label").classList.toggle("muted", m === "infill");
    if (m === "infill" && !$("code").value.includes(HOLE)) {
      $("code").placeholder = "def add(a, b):\n    " + HOLE + "\n";
    }
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) {
      h.Authorization = "Bearer " + key;
      try { sessionStorage.setItem("codetune-key", key); } catch (e) { /* private mode */ }
    }
    return h;
  }

  function render() {
    const lang = $("language").value;
    const out = $("output");
    const esc = window.codetuneEscape;
    const hl = (s) => window.codetuneHighlight(s, lang);
    if (result.error) {
      out.innerHTML = hl(result.before + result.text) + '\n<span class="error">' + esc(result.error) + "</span>";
      return;
    }
    if (result.after) {  // infill: the hole's code highlighted, around it the context dimmed
      out.innerHTML = '<span class="context">' + esc(result.before) + "</span>" + hl(result.text) +
        '<span class="context">' + esc(result.after) + "</span>";
    } else {
      out.innerHTML = hl(result.before + result.text);
    }
  }

  // The endpoint and body for the current inputs; `before`/`after` frame the generated text.
  function buildRequest() {
    const m = mode();
    const description = $("description").value.trim();
    const code = $("code").value;
    const common = {
      model: $("model").value,
      max_tokens: parseInt($("max-tokens").value, 10) || 128,
      temperature: parseFloat($("temperature").value),
      stream: true,
    };
    if (m === "infill") {
      const i = code.indexOf(HOLE);
      if (i < 0) throw new Error("write " + HOLE + " in the code where the model should fill in");
      const before = code.slice(0, i), after = code.slice(i + HOLE.length);
      return { url: "/v1/completions", body: Object.assign(common, { prompt: before, suffix: after }), before, after };
    }
    if (m === "complete" && !description) {
      if (!code) throw new Error("describe the code, or write the start of it");
      return { url: "/v1/completions", body: Object.assign(common, { prompt: code }), before: code, after: "" };
    }
    const body = Object.assign(common, { description, language: $("language").value, mode: m, code });
    return { url: "/v1/generate", body, before: m === "complete" ? code : "", after: "" };
  }

  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          onData(JSON.parse(data));
        }
      }
    }
  }

  async function generate() {
    let req;
    try { req = buildRequest(); } catch (e) { setStatus(e.message, true); return; }
    result = { before: req.before, text: "", after: req.after };
    const out = $("output");
    out.dataset.chunks = "0";
    out.dataset.done = "false";
    render();
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop").disabled = false;
    setStatus("waiting for the model…");
    const started = performance.now();
    let pending = false;
    try {
      const response = await fetch(req.url, {
        method: "POST", headers: headers(), body: JSON.stringify(req.body), signal: controller.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const retry = response.headers.get("Retry-After");
        throw new Error((body.error && body.error.message || response.statusText) +
          (retry ? " (retry in " + retry + " s)" : ""));
      }
      setStatus("generating…");
      await readEvents(response, (data) => {
        if (data.error) throw new Error(data.error.message);
        const choice = data.choices && data.choices[0];
        if (!choice || !choice.text) return;
        result.text += choice.text;
        out.dataset.chunks = String(parseInt(out.dataset.chunks, 10) + 1);
        if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); }
      });
      render();
      const secs = (performance.now() - started) / 1000;
      setStatus("done in " + secs.toFixed(1) + " s, " + out.dataset.chunks + " chunks streamed");
    } catch (e) {
      if (e.name === "AbortError") setStatus("stopped");
      else { result.error = e.message; render(); setStatus("error", true); }
    } finally {
      out.dataset.done = "true";
      controller = null;
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  async function copy() {
    const text = result.after ? result.before + result.text + result.after : result.before + result.text;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {  // no clipboard API (not a secure context): the old way
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    $("copy").textContent = "Copied";
    setTimeout(() => { $("copy").textContent = "Copy"; }, 1200);
  }

  async function loadHealth() {
    try {
      const health = await (await fetch("/health")).json();
      const select = $("model");
      select.innerHTML = "";
      for (const name of health.models) select.add(new Option(name, name));
      $("key-row").hidden = !health.auth_required;
      const saved = sessionStorage.getItem("codetune-key");
      if (saved) $("api-key").value = saved;
      $("health").textContent = health.models.length + " model(s), " + health.running + " running, " +
        health.waiting + " waiting";
    } catch (e) {
      $("health").textContent = "server unreachable";
    }
  }

  document.querySelectorAll('input[name="mode"]').forEach((r) => r.addEventListener("change", showMode));
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = parseFloat($("temperature").value).toFixed(2);
  });
  $("language").addEventListener("change", render);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("copy").addEventListener("click", copy);
  $("description").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
  });
  showMode();
  loadHealth();
})();
