// The page's tabs and its Steer tab: control QA pairs, prompts and steps; a background run
// on the server, polled until it ends; then each prompt's completion before and after.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { api, showError, lines } = window.latentqa;
  const POLL_MS = 500;
  // A few failed polls in a row (the server restarting, a network blip) end the watch.
  const MAX_POLL_FAILURES = 5;
  const EXAMPLE_PAIR = ["What is the emotional tone of the assistant's replies?",
    "Its replies are cheerful."];
  const EXAMPLE_PROMPTS = ["Hi! How are you doing today?",
    "What should I cook for dinner tonight?", "Tell me something interesting about octopuses."];
  const PHASES = {
    loading: "Loading the steering model (the first run loads it)…",
    before: "Completing the prompts before steering…",
    steering: "Steering…",
    after: "Completing the prompts after steering…",
  };
  const run = { id: null, timer: null, failures: 0, stopping: false };

  // ---- Tabs (keyboard: arrows, Home, End, as the ARIA tabs pattern) --------------------
  const tabs = Array.from(document.querySelectorAll('.tabs [role="tab"]'));

  function selectTab(tab, focus) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    const hash = tab.id === "tab-steer" ? "#steer" : "";
    history.replaceState(null, "", location.pathname + location.search + hash);
  }

  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length], true);
    });
  });
  if (location.hash === "#steer") selectTab($("tab-steer"), false);

  // ---- Control pairs --------------------------------------------------------------------
  // Each row's inputs are labelled with its number, for screen readers.
  function renumber() {
    document.querySelectorAll("#steer-pairs .pair").forEach((node, index) => {
      node.querySelector(".question").setAttribute("aria-label", `Question ${index + 1}`);
      node.querySelector(".answer").setAttribute("aria-label", `Answer ${index + 1}`);
      node.querySelector(".remove").setAttribute("aria-label", `Remove pair ${index + 1}`);
    });
  }

  function addPair(question, answer) {
    const node = $("pair-template").content.firstElementChild.cloneNode(true);
    node.querySelector(".question").value = question || "";
    node.querySelector(".answer").value = answer || "";
    node.querySelector(".remove").addEventListener("click", () => {
      node.remove();
      renumber();
    });
    $("steer-pairs").append(node);
    renumber();
    return node.querySelector(".question");
  }

  // Rows left wholly blank are skipped; a half-filled one goes to the server, which says
  // which field is empty.
  function readPairs() {
    return Array.from(document.querySelectorAll("#steer-pairs .pair"))
      .map((node) => [node.querySelector(".question").value, node.querySelector(".answer").value])
      .filter(([question, answer]) => question.trim() || answer.trim());
  }

  function numberIn(id, fallback) {
    const text = $(id).value.trim();
    return text === "" ? fallback : Number(text);
  }

  // ---- Progress and results -------------------------------------------------------------
  function setRunning(running) {
    $("steer-run").disabled = running;
    $("steer-run").textContent = running ? "Steering…" : "Steer";
    $("steer-stop").hidden = !running;
    $("steer-stop").disabled = false;
  }

  function loss(value) {
    return value == null ? "—" : value.toFixed(3);
  }

  function drawLoss(status) {
    const box = $("steer-loss");
    box.textContent = "";
    const values = [status.initial_loss, ...status.losses].filter((v) => v != null);
    if (values.length < 2) return;
    const low = Math.min(...values);
    const span = Math.max(...values) - low || 1;
    const width = 300;
    const height = 48;
    const points = values.map((value, i) => {
      const x = (width * i) / (values.length - 1);
      const y = 4 + (height - 8) * (1 - (value - low) / span);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const ns = "http://www.w3.org/2000/svg";
    const root = document.createElementNS(ns, "svg");
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    root.setAttribute("preserveAspectRatio", "none");
    root.setAttribute("role", "img");
    root.setAttribute("aria-label", `Control loss over ${values.length - 1} steps: `
      + `${loss(values[0])} to ${loss(values[values.length - 1])}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    root.append(line);
    box.append(root);
  }

  function cell(text, className, pending) {
    const td = document.createElement("td");
    td.className = className + (pending ? " pending" : "");
    td.textContent = pending ? pending : text || "(empty)";
    return td;
  }

  function drawResults(status) {
    const body = $("steer-results").querySelector("tbody");
    body.textContent = "";
    const waiting = status.state === "running" ? "…" : "—";
    status.prompts.forEach((prompt, i) => {
      const row = document.createElement("tr");
      const before = status.before[i];
      const after = status.after[i];
      row.append(cell(prompt, "prompt"), cell(before, "before", before == null && waiting),
        cell(after, "after", after == null && waiting));
      body.append(row);
    });
  }

  function describe(status) {
    const last = status.losses.length ? status.losses[status.losses.length - 1] : null;
    const losses = status.initial_loss == null ? ""
      : ` · control loss ${loss(status.initial_loss)} → ${loss(last ?? status.initial_loss)}`;
    if (status.state === "done") {
      const decoder = status.decoder ? ` · decoder ${status.decoder}` : "";
      return `Done: ${status.steps} steps in ${status.seconds.toFixed(1)} s${losses}${decoder}.`;
    }
    if (status.state !== "running") {
      return `The run ${status.state} after ${status.step} of ${status.steps} steps${losses}.`;
    }
    if (run.stopping) return "Stopping after the current step…";
    if (status.phase === "steering") {
      return `Steering: step ${status.step} of ${status.steps}${losses}`;
    }
    return PHASES[status.phase] || "Working…";
  }

  function show(status) {
    const bar = $("steer-bar");
    bar.hidden = false;
    bar.max = status.steps;
    bar.value = status.step;
    $("steer-status").textContent = describe(status);
    drawLoss(status);
    drawResults(status);
    if (status.error) showError("steer-error", new Error(status.error));
  }

  function end() {
    clearTimeout(run.timer);
    run.timer = null;
    run.stopping = false;
    setRunning(false);
  }

  async function poll() {
    let status;
    try {
      status = await api(`/api/steer/${encodeURIComponent(run.id)}`);
      run.failures = 0;
    } catch (error) {
      run.failures += 1;
      if (run.failures >= MAX_POLL_FAILURES) {
        showError("steer-error", error);
        end();
      } else {
        run.timer = setTimeout(poll, POLL_MS * 2);
      }
      return;
    }
    show(status);
    if (status.state === "running") run.timer = setTimeout(poll, POLL_MS);
    else end();
  }

  async function steer() {
    showError("steer-error", null);
    const body = {
      pairs: readPairs(),
      prompts: lines("steer-prompts"),
      steps: numberIn("steer-steps", 20),
      max_new_tokens: numberIn("steer-tokens", 32),
    };
    setRunning(true);
    $("steer-status").textContent = "Starting…";
    try {
      const status = await api("/api/steer", body);
      run.id = status.id;
      run.failures = 0;
      show(status);
      run.timer = setTimeout(poll, POLL_MS);
    } catch (error) {
      showError("steer-error", error);
      const busy = error.status === 409 && error.body && error.body.id;
      if (busy) {
        // Another run holds the slot (started before a reload, or elsewhere): follow it,
        // so that it can be watched or stopped from here.
        run.id = error.body.id;
        run.failures = 0;
        $("steer-status").textContent = "Following the run in progress…";
        run.timer = setTimeout(poll, POLL_MS);
      } else {
        $("steer-status").textContent = "Not started.";
        end();
      }
    }
  }

  async function stop() {
    if (!run.id) return;
    $("steer-stop").disabled = true;
    run.stopping = true;
    $("steer-status").textContent = "Stopping after the current step…";
    try {
      await api(`/api/steer/${encodeURIComponent(run.id)}/stop`, {});
    } catch (error) {
      showError("steer-error", error);
    }
  }

  // ---- Wiring ---------------------------------------------------------------------------
  $("steer-add-pair").addEventListener("click", () => addPair("", "").focus());
  $("steer-run").addEventListener("click", steer);
  $("steer-stop").addEventListener("click", stop);
  addPair(EXAMPLE_PAIR[0], EXAMPLE_PAIR[1]);
  $("steer-prompts").value = EXAMPLE_PROMPTS.join("\n");
})();
