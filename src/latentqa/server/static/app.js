// The latentqa page: edit a dialog, ask questions, chart an answer's likelihood per layer.
// Plain JS, no libraries; every model call goes through the JSON API under /api.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const COLORS = ["#4353d9", "#e07a1f", "#1f9d74", "#c2417a"];
  const state = { ready: false, examples: [], health: null, busy: 0, decoder: "" };

  // ---- API ----------------------------------------------------------------------------
  async function api(path, body) {
    const options = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new Error("cannot reach the server (is `latentqa serve` still running?)");
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      const failure = new Error(data && data.error ? data.error : `HTTP ${response.status}`);
      failure.status = response.status;
      failure.body = data;
      throw failure;
    }
    return data;
  }

  function showError(id, error) {
    const box = $(id);
    box.hidden = !error;
    box.textContent = error ? String(error.message || error) : "";
  }

  // ---- Status ---------------------------------------------------------------------------
  function setStatus(kind, text) {
    const box = $("status");
    box.className = "status " + kind;
    box.textContent = text;
  }

  function shortPath(value) {
    if (!value) return "—";
    const parts = String(value).split(/[\\/]/).filter(Boolean);
    return parts.length > 2 ? "…/" + parts.slice(-2).join("/") : String(value);
  }

  function showRunning(health) {
    const fields = {
      "info-target": shortPath(health.target),
      "info-decoder": shortPath(health.decoder),
      "info-device": health.device || "—",
      "info-layers": health.n_layers == null ? "—"
        : `${health.n_layers} (reads ${(health.read_layers || []).join(", ") || "?"})`,
    };
    for (const [id, text] of Object.entries(fields)) {
      $(id).textContent = text;
      $(id).title = id === "info-layers" ? "" : String(health[id.slice(5)] || "");
    }
  }

  // The layers the chosen decoder reads one at a time: every target layer, or (with a
  // projector) only its own read layers. A decoder not loaded yet is offered every layer.
  function readableLayers() {
    const health = state.health || {};
    const name = $("decoder").value || (health.decoders || [])[0];
    const every = Array.from({ length: health.n_layers || 0 }, (_, layer) => layer);
    return (health.readable_layers || {})[name] || every;
  }

  function fillLayers() {
    const select = $("layer");
    const kept = select.value;
    select.textContent = "";
    const reads = ((state.health || {}).read_layers || []).join(", ");
    select.append(new Option(`decoder default (${reads || "trained"})`, ""));
    const layers = readableLayers();
    for (const layer of layers) select.append(new Option(`layer ${layer}`, String(layer)));
    select.value = layers.includes(Number(kept)) && kept !== "" ? kept : "";
    const few = layers.length < ((state.health || {}).n_layers || 0);
    $("chart-scope").hidden = !few;
    $("chart-scope").textContent = few ? `This decoder reads layers ${layers.join(", ")} `
      + "only (its projector maps no others): the chart scores each of them alone." : "";
  }

  // The decoders the server offers; its own first (the default choice).
  function fillDecoders(health) {
    const select = $("decoder");
    select.textContent = "";
    const names = health.decoders && health.decoders.length ? health.decoders : ["default"];
    names.forEach((name, index) => {
      select.append(new Option(index === 0 ? `${name} (server default)` : name, name));
    });
    chooseDecoder(state.decoder);
  }

  // Select the decoder called `name`, or the server's own when it has none of that name.
  function chooseDecoder(name) {
    state.decoder = name || "";
    const select = $("decoder");
    const names = Array.from(select.options).map((option) => option.value);
    if (names.length) select.value = names.includes(state.decoder) ? state.decoder : names[0];
  }

  function readOptions() {
    const subject = $("subject").value.trim();
    return { decoder: $("decoder").value || null, subject: subject || null };
  }

  async function pollHealth() {
    let health;
    try {
      health = await api("/api/health");
    } catch (error) {
      setStatus("error", "Cannot reach the server: " + error.message);
      setTimeout(pollHealth, 2000);
      return;
    }
    state.health = health;
    showRunning(health);
    if (health.status === "ready") {
      state.ready = true;
      fillDecoders(health);
      fillLayers();
      const loaded = health.message.replace(/^ready\s*/, "");
      setStatus("ready", `Model ready${loaded ? " " + loaded : ""}. Write a dialog, then ask `
        + "questions about what the target model's activations reveal.");
      updateButtons();
    } else if (health.status === "error") {
      setStatus("error", health.message);
    } else {
      setStatus("loading", `Loading the model, please wait: ${health.message}…`);
      setTimeout(pollHealth, 1000);
    }
  }

  function updateButtons() {
    const idle = state.ready && state.busy === 0;
    $("ask").disabled = !idle;
    $("chart-run").disabled = !idle;
  }

  async function busy(button, label, work) {
    const original = button.textContent;
    state.busy += 1;
    updateButtons();
    button.textContent = label;
    try {
      return await work();
    } finally {
      state.busy -= 1;
      button.textContent = original;
      updateButtons();
    }
  }

  // ---- Dialog editor --------------------------------------------------------------------
  function addTurn(role, content) {
    const node = $("turn-template").content.firstElementChild.cloneNode(true);
    const select = node.querySelector(".role");
    const text = node.querySelector(".content");
    select.value = role;
    node.dataset.role = role;
    text.value = content || "";
    text.placeholder = { system: "Hidden instruction, e.g. You are a pirate captain.",
      user: "What the user says", assistant: "The assistant's reply (optional)" }[role];
    select.addEventListener("change", () => { node.dataset.role = select.value; });
    node.querySelector(".remove").addEventListener("click", () => node.remove());
    $("turns").append(node);
    return text;
  }

  function readDialog() {
    return Array.from(document.querySelectorAll("#turns .turn")).map((node) => ({
      role: node.querySelector(".role").value,
      content: node.querySelector(".content").value,
    }));
  }

  function lines(id) {
    return $(id).value.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  function loadExample(example) {
    $("turns").textContent = "";
    for (const message of example.dialog) addTurn(message.role, message.content);
    $("questions").value = example.questions.join("\n");
    $("chart-question").value = example.questions[0] || "";
    $("chart-answers").value = example.answer || "";
    $("subject").value = example.subject || "";
    chooseDecoder(example.decoder);
    fillLayers();
    $("answers").textContent = "";
    $("chart").textContent = "";
    showError("ask-error", null);
    showError("chart-error", null);
  }

  async function loadExamples() {
    try {
      state.examples = await api("/api/examples");
    } catch (error) {
      state.examples = [];
    }
    const select = $("example");
    state.examples.forEach((example, index) => {
      select.append(new Option(example.title, String(index)));
    });
    if (state.examples.length) {
      select.value = "0";
      loadExample(state.examples[0]);
    } else {
      addTurn("system", "");
      addTurn("user", "");
    }
  }

  // ---- Ask ------------------------------------------------------------------------------
  function answerItem(question) {
    const item = document.createElement("li");
    const q = document.createElement("div");
    q.className = "q";
    q.textContent = "Q: " + question;
    const a = document.createElement("div");
    a.className = "a pending";
    a.textContent = "thinking…";
    item.append(q, a);
    return item;
  }

  // The evidence badge: how much more likely the answer is with this dialog's activations
  // than with other dialogs' (nats per answer token); "read" above the decoder's threshold.
  function evidenceBadge(result, index) {
    const value = result.evidence[index];
    const threshold = result.evidence_threshold;
    const read = value > threshold;
    const badge = document.createElement("span");
    badge.className = "evidence " + (read ? "read" : "guessed");
    const sign = value >= 0 ? "+" : "\u2212";
    badge.textContent = `${read ? "read" : "guessed"} ${sign}${Math.abs(value).toFixed(2)} `
      + "nats/token";
    const reference = result.logprob_reference[index];
    badge.title = "Evidence: how much more likely this answer is with this dialog's "
      + "activations than with other dialogs' (mean log-likelihood per answer token: this "
      + `dialog ${result.logprob_real[index].toFixed(2)}, reference dialogs `
      + `${reference === null ? "n/a" : reference.toFixed(2)}, zeroed `
      + `${result.logprob_zeroed[index].toFixed(2)}). Above ${threshold} nats/token the answer `
      + "was read from the activations; otherwise the decoder would say it of any dialog.";
    return badge;
  }

  async function ask() {
    showError("ask-error", null);
    const questions = lines("questions");
    const layerValue = $("layer").value;
    const body = {
      dialog: readDialog(),
      questions,
      layer: layerValue === "" ? null : Number(layerValue),
      max_new_tokens: Number($("max-tokens").value) || 48,
      ...readOptions(),
    };
    const list = $("answers");
    list.textContent = "";
    const items = questions.map((question) => answerItem(question));
    items.forEach((item) => list.append(item));
    await busy($("ask"), "Asking…", async () => {
      try {
        const result = await api("/api/ask", body);
        result.answers.forEach((answer, index) => {
          const node = items[index].querySelector(".a");
          node.className = "a answer";
          node.textContent = answer || "(empty answer)";
          const meta = document.createElement("div");
          meta.className = "meta";
          if (Array.isArray(result.evidence)) meta.append(evidenceBadge(result, index), " · ");
          meta.append(`read layer ${result.read_layers.join(", ")}`);
          if (result.decoder) meta.append(` · decoder ${result.decoder}`);
          items[index].append(meta);
        });
        if (!$("chart-question").value) $("chart-question").value = questions[0] || "";
      } catch (error) {
        list.textContent = "";
        showError("ask-error", error);
      }
    });
  }

  // ---- Per-layer chart ------------------------------------------------------------------
  function svg(tag, attributes, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const factor of [1, 2, 5, 10]) if (factor * step >= value * 0.999) return factor * step;
    return 10 * step;
  }

  function drawChart(result, answers) {
    const box = $("chart");
    box.textContent = "";
    // Rows not scored yet are null: their bars are simply missing.
    const probs = result.scores.map((row) => (row ? row.map((logp) => Math.exp(logp)) : null));
    const top = niceMax(Math.max(0, ...probs.filter(Boolean).flat()));
    const n = result.layers.length;
    const width = Math.max(300, box.clientWidth || 960);
    const height = 250;
    const pad = { left: 66, right: 10, top: 12, bottom: 40 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const slot = plotW / n;
    const barW = Math.max(1.5, Math.min(28, (slot * 0.8) / answers.length));
    const groupW = barW * answers.length;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Mean per-token probability of each answer at each layer" });
    result.layers.forEach((layer, i) => {
      if (result.read_layers.includes(layer)) {
        root.append(svg("rect", { class: "read-layer", x: pad.left + i * slot, y: pad.top,
          width: slot, height: plotH }));
      }
    });
    for (let k = 0; k <= 5; k += 1) {
      const y = pad.top + plotH - (plotH * k) / 5;
      root.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right,
        y1: y, y2: y }));
      root.append(svg("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" },
        String(Number(((top * k) / 5).toPrecision(3)))));
    }
    result.layers.forEach((layer, i) => {
      answers.forEach((answer, j) => {
        if (!probs[i]) return;
        const value = probs[i][j];
        const h = (plotH * value) / top;
        const bar = svg("rect", { x: pad.left + (i + 0.5) * slot - groupW / 2 + j * barW,
          y: pad.top + plotH - h, width: barW - 1, height: Math.max(h, 0.5),
          fill: COLORS[j % COLORS.length], rx: 1.5 });
        bar.append(svg("title", {}, `layer ${layer}, "${answer}": per-token probability `
          + `${value.toFixed(4)} (log-prob ${result.scores[i][j].toFixed(3)})`));
        root.append(bar);
      });
      const every = n > 40 ? 5 : n > 20 ? 2 : 1;
      if (i % every === 0 || result.read_layers.includes(layer)) {
        root.append(svg("text", { x: pad.left + (i + 0.5) * slot, y: pad.top + plotH + 15,
          "text-anchor": "middle" }, String(layer)));
      }
    });
    root.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right,
      y1: pad.top + plotH, y2: pad.top + plotH }));
    root.append(svg("text", { x: pad.left + plotW / 2, y: height - 6, "text-anchor": "middle" },
      "target layer read (shaded: the decoder's trained read layer)"));
    root.append(svg("text", { x: 14, y: pad.top + plotH / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${pad.top + plotH / 2})` }, "per-token probability"));
    box.append(root);
    const legend = document.createElement("div");
    legend.className = "legend";
    answers.forEach((answer, j) => {
      const span = document.createElement("span");
      span.style.setProperty("--swatch", COLORS[j % COLORS.length]);
      span.textContent = answer;
      legend.append(span);
    });
    const note = document.createElement("span");
    note.className = "muted";
    const done = probs.filter(Boolean).length;
    note.textContent = done < n ? `scoring… ${done} of ${n} layers`
      : `${n} layers scored in ${result.seconds.toFixed(1)} s`;
    legend.append(note);
    box.append(legend);
  }

  // Score the layers a few at a time, so the chart fills in as results arrive.
  async function chart() {
    showError("chart-error", null);
    const answers = lines("chart-answers").slice(0, 4);
    const base = { dialog: readDialog(), question: $("chart-question").value,
      answers, normalize: true, ...readOptions() };
    const all = readableLayers();
    const n = all.length;
    const result = { layers: all, scores: all.map(() => null),
      read_layers: (state.health || {}).read_layers || [], seconds: 0 };
    const step = Math.max(1, Math.ceil(n / 6));
    $("chart").textContent = "";
    await busy($("chart-run"), "Scoring…", async () => {
      try {
        for (let start = 0; start < n; start += step) {
          const layers = all.slice(start, start + step);
          const part = await api("/api/layer-scores", { ...base, layers });
          part.scores.forEach((row, k) => { result.scores[all.indexOf(part.layers[k])] = row; });
          result.seconds += part.seconds;
          result.read_layers = part.read_layers;
          drawChart(result, answers);
        }
      } catch (error) {
        $("chart").textContent = "";
        showError("chart-error", error);
      }
    });
  }

  // Shared with steer.js (the Steer tab), which loads after this script.
  window.latentqa = { api, showError, lines };

  // ---- Wiring ---------------------------------------------------------------------------
  document.querySelectorAll("[data-add]").forEach((button) => {
    button.addEventListener("click", () => addTurn(button.dataset.add, "").focus());
  });
  $("example").addEventListener("change", (event) => {
    const example = state.examples[Number(event.target.value)];
    if (example) loadExample(example);
  });
  $("decoder").addEventListener("change", fillLayers);
  $("ask").addEventListener("click", ask);
  $("chart-run").addEventListener("click", chart);
  $("questions").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("ask").disabled) ask();
  });
  loadExamples();
  pollHealth();
})();
