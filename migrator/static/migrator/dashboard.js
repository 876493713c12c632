// The dashboard refreshes its numbers in place while a phase runs: every few seconds it asks the progress
// endpoint (the same read model as the page, as JSON) and rewrites the counts, states, bars, running steps
// and totals. It stops once two answers in a row say nothing runs (one could fall between two steps). A failed
// answer (a restarting server, a proxy's 502, a network blip) is retried later and later, up to once a minute,
// while the page says since when its numbers are; a session that has ended stops it with a line saying so.
"use strict";
(function () {
  const script = document.getElementById("dashboard-refresh");
  const url = script.dataset.url;
  const delay = Math.max(1, Number(script.dataset.seconds) || 5) * 1000;
  const number = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US"));
  const slug = (state) => state.replace(/\s+/g, "-");
  const longestRetry = 60 * 1000;
  let idle = 0;
  let failures = 0;

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    Object.assign(node, attributes);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function badge(state, text) {
    return element("span", { className: `sf-state sf-${slug(state)}` }, text);
  }

  function showPhase(phase) {
    const row = document.querySelector(`tr.phase-row[data-phase="${phase.name}"]`);
    if (!row) return;
    for (const key of ["done", "running", "failed", "pending"]) {
      row.querySelector(`.${key}-count`).textContent = phase[key];
    }
    const state = row.querySelector(".phase-state");
    state.className = `sf-state sf-${slug(phase.state)} phase-state`;
    state.textContent = phase.state;
    row.querySelector(".sf-bar").replaceChildren(
      ...phase.bar.map((part) => {
        const span = element("span", { className: `sf-${slug(part.state)}`, title: `${part.count} ${part.state}` });
        span.style.width = `${part.percent}%`;
        return span;
      }),
    );
    const rolledBack = phase.rolled_back ? `, ${phase.rolled_back} rolled back` : "";
    const plural = phase.tenants === 1 ? "" : "s";
    row.querySelector(".percent-done").textContent =
      `${phase.percent_done}% of ${phase.tenants} tenant${plural} done${rolledBack}`;
  }

  function showRunning(steps) {
    document.getElementById("running-steps").hidden = steps.length === 0;
    document.getElementById("running-heading").textContent = `Running now (${steps.length})`;
    document.getElementById("running-steps-body").replaceChildren(
      ...steps.map((step) => {
        const row = element("tr");
        const link = element("a", { href: step.url }, step.migration_id);
        const cells = [
          link,
          step.tenant_id || "—",
          step.started_at,
          `${number(step.rows_copied)} / ${number(step.rows_expected)}`,
          `${step.host} / ${step.pid ?? ""}`,
        ];
        cells.forEach((content, index) => {
          const cell = element("td", index === 3 ? { className: "num" } : {});
          cell.append(content);
          row.append(cell);
        });
        return row;
      }),
    );
  }

  function show(data) {
    const current = document.getElementById("current-phase");
    if (data.current_phase) {
      const phase = data.current_phase;
      current.replaceChildren("current phase: ", element("strong", {}, `${phase.number} ${phase.name}`), " ");
      current.append(badge(phase.state, phase.state));
    } else {
      current.replaceChildren(badge("done", "all phases done"));
    }
    document.getElementById("generated-at").textContent = data.generated_at_text;
    const failures = document.getElementById("failures-heading");
    failures.textContent = `Failed steps (${data.failures_total})`;
    document.getElementById("failures-changed").hidden = String(data.failures_total) === failures.dataset.total;
    data.phases.forEach(showPhase);
    showRunning(data.running_steps);
    const totals = data.totals;
    for (const [id, value] of [
      ["legacy-rows", totals.legacy_rows],
      ["rows-moved", totals.rows_moved],
      ["tenant-rows-moved", totals.tenant_rows_moved],
      ["rows-validated", totals.rows_validated],
    ]) {
      document.getElementById(id).textContent = number(value);
    }
    document.getElementById("validations").textContent = totals.validations;
  }

  function status(text) {
    document.getElementById("live-status").textContent = text;
  }

  async function poll() {
    let data;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      // The admin sends a request without a valid session to its login page.
      if (response.redirected || response.status === 401 || response.status === 403) {
        status("(live refresh stopped: signed out; reload the page to sign in again)");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      data = await response.json();
    } catch (error) {
      failures += 1;
      const wait = Math.min(delay * 2 ** failures, longestRetry);
      const shown = document.getElementById("generated-at").textContent;
      status(`(refresh failed: ${error.message}; numbers as of ${shown}; retrying in ${wait / 1000} s)`);
      setTimeout(poll, wait);
      return;
    }
    failures = 0;
    show(data);
    idle = data.running ? 0 : idle + 1;
    if (idle >= 2) {
      status("(nothing running: live refresh stopped)");
      return;
    }
    status(`(refreshing every ${delay / 1000} s)`);
    setTimeout(poll, delay);
  }

  if (script.dataset.running === "true") {
    status(`(refreshing every ${delay / 1000} s)`);
    setTimeout(poll, delay);
  }
})();
