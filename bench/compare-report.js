// Turns one bench/compare.sh run (run.json, manifest.jsonl and the sim's --json reports in
// RESULTS_DIR) into the markdown report: node bench/compare-report.js RESULTS_DIR
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.argv[2];
const run = JSON.parse(fs.readFileSync(path.join(dir, "run.json"), "utf8"));
const entries = fs.readFileSync(path.join(dir, "manifest.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
for (const e of entries) {
    try {
        e.r = JSON.parse(fs.readFileSync(path.join(dir, e.json), "utf8"));
    } catch (err) {
        e.r = null;
    }
}

const NAME = { yijian: "Yijian", peer: run.peer_instances > 1 ? `Mosquitto + ${run.peer_instances}× Node-RED` : "Mosquitto + Node-RED" };
const f = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const mib = (kb) => (kb === null || kb === undefined ? "–" : (kb / 1024).toFixed(1));
const int = (x) => (x === null || x === undefined ? "–" : String(Math.round(x)).replace(/\B(?=(\d{3})+(?!\d))/g, ","));
const verdict = (e) => {
    if (!e.r) return e.rc === 124 ? "timed out" : `run failed (exit ${e.rc})`;
    return e.rc === 0 ? "ok" : e.rc === 2 ? "**lost/doubled**" : `exit ${e.rc}`;
};
const ratio = (a, b, d = 1) => (a > 0 && b > 0 ? `${(a / b).toFixed(d)}×` : "–");
const out = [];
const p = (s = "") => out.push(s);

p(`# Yijian vs Mosquitto + Node-RED — ${run.date}`);
p();
p(`Machine: ${run.cpu}, ${run.cores} cores, ${run.mem_gib} GiB; load average before the run ${run.load_before}. ` +
    `Devices, mock backends and the system under test all on this machine (loopback).`);
p();
p(`Versions: ${run.yijian || "yijian-gateway ?"} (log: ${run.yijian_log}); ${run.mosquitto || "mosquitto –"}; ` +
    `Node-RED ${run.node_red || "–"} on Node.js ${run.node}` +
    (run.peer_instances > 1 ? ` (${run.peer_instances} instances sharing the presses through \`$share/peer/…\`).` : " (one instance: one JavaScript thread)."));
p();
const maxHow = run.max_mode === "fresh"
    ? `maximum searched from ${run.max_start}/s in ${run.step} steps (×1.5, then bisect), each step against a freshly started system`
    : run.max_mode === "sim" ? `maximum by \`yijian-sim run --max-rate\` from ${run.max_start}/s in ${run.step} steps, one system through all steps`
    : "no maximum searched";
p(`Command: \`${run.command}\` — ${run.devices} devices, ${run.duration} per offered rate, drain ${run.drain}; ` +
    `${maxHow}; a step holds when nothing is lost and p99 press → dispatched ≤ ${run.p99_limit}.`);
p();

const rates = entries.filter((e) => e.kind === "rate");
if (rates.length) {
    p("## Equal offered load");
    p();
    p("| offered /s | system | throughput /s | press → backend p50 ms | press → backend p99 ms | press → received p99 ms | press → dispatched p99 ms | CPU s / 1,000 presses | peak RSS MiB | presses | lost | doubled | escalated | retransmits | result |");
    p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (const e of rates) {
        const r = e.r;
        const s = r && r.steps && r.steps[0];
        p(`| ${int(e.offered)} | ${NAME[e.system]} | ${f(s && s.throughput)} | ${f(r && r.press_to_backend.p50_ms, 2)} | ${f(r && r.press_to_backend.p99_ms, 2)} | ` +
            `${f(s && s.press_to_received.p99_ms, 2)} | ${f(s && s.press_to_dispatched.p99_ms, 2)} | ${f(r && r.gateway_cpu_s_per_1000_presses, 3)} | ` +
            `${mib(r && r.gateway_peak_rss_kb)} | ${int(r && r.presses_sent)} | ${int(r && r.without_final_answer)} | ${int(r && r.doubled)} | ` +
            `${int(s && s.escalated)} | ${int(s && s.retransmits)} | ${verdict(e)} |`);
    }
    p();
}

// The maximum, either the sim's --max-rate (one run of many steps: kind "max") or the script's
// search (one fresh run per step: kind "maxstep"); one summary per system.
const limitMs = parseFloat(run.p99_limit) * (/ms$/.test(run.p99_limit) ? 1 : 1000);
const maxes = [];
for (const system of ["yijian", "peer"]) {
    const one = entries.find((e) => e.system === system && e.kind === "max");
    if (one) {
        const r = one.r;
        const steps = r ? r.steps : [];
        const held = r ? r.max_rate_held : null;
        const at = held ? steps.find((s) => s.rate_offered === held) : null;
        maxes.push({ system, e: one, steps, held, at, cpu: r && r.gateway_cpu_s_per_1000_presses, rss: r && r.gateway_peak_rss_kb,
            presses: r && r.presses_sent, lost: r && r.without_final_answer, doubled: r && r.doubled, verdict: verdict(one) });
        continue;
    }
    const runs = entries.filter((e) => e.system === system && e.kind === "maxstep");
    if (!runs.length) continue;
    const ok = runs.filter((e) => e.r);
    const steps = ok.map((e) => e.r.steps[0]);
    const heldRuns = ok.filter((e) => e.r.steps[0].lost === 0 && e.r.steps[0].press_to_dispatched.p99_ms <= limitMs);
    const best = heldRuns.sort((a, b) => b.offered - a.offered)[0];
    const sum = (k) => ok.reduce((a, e) => a + (e.r[k] || 0), 0);
    maxes.push({ system, steps, held: best ? best.offered : null, at: best ? best.r.steps[0] : null,
        cpu: best && best.r.gateway_cpu_s_per_1000_presses, rss: best && best.r.gateway_peak_rss_kb,
        presses: sum("presses_sent"), lost: sum("without_final_answer"), doubled: sum("doubled"),
        verdict: runs.every((e) => e.rc === 0) ? "ok" : runs.map(verdict).filter((v) => v !== "ok").join(", ") });
}
if (maxes.length) {
    p(`## Each system's maximum (${run.max_mode === "fresh" ? "a fresh system per step" : "`yijian-sim run --max-rate`"})`);
    p();
    const fresh = run.max_mode === "fresh";
    p(`| system | highest rate held /s | steps (rate: p99 press → dispatched ms, lost) | throughput at it /s | press → dispatched p99 at it ms | CPU s / 1,000 presses ${fresh ? "(at it)" : "(all steps)"} | peak RSS MiB ${fresh ? "(at it)" : ""} | presses (all steps) | lost (all steps) | doubled | result |`);
    p("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (const m of maxes) {
        const steps = m.steps.length ? m.steps.map((s) => `${int(s.rate_offered)}: ${f(s.press_to_dispatched.p99_ms)}, ${int(s.lost)}`).join("; ") : "–";
        p(`| ${NAME[m.system]} | ${m.held ? int(m.held) : "none held"} | ${steps} | ${f(m.at && m.at.throughput)} | ${f(m.at && m.at.press_to_dispatched.p99_ms, 2)} | ` +
            `${f(m.cpu, 3)} | ${mib(m.rss)} | ${int(m.presses)} | ${int(m.lost)} | ${int(m.doubled)} | ${m.verdict} |`);
    }
    p();
}

// Side by side: Yijian against the peer.
const pair = (kind, offered) => {
    const y = entries.find((e) => e.system === "yijian" && e.kind === kind && e.offered === offered);
    const n = entries.find((e) => e.system === "peer" && e.kind === kind && e.offered === offered);
    return y && n && y.r && n.r ? [y.r, n.r] : null;
};
const lines = [];
for (const off of [...new Set(rates.map((e) => e.offered))]) {
    const pr = pair("rate", off);
    if (!pr) continue;
    const [y, n] = pr;
    lines.push(`| ${int(off)}/s | p99 press → backend: peer ${ratio(n.press_to_backend.p99_ms, y.press_to_backend.p99_ms)} Yijian's ` +
        `| CPU per press: peer ${ratio(n.gateway_cpu_s_per_1000_presses, y.gateway_cpu_s_per_1000_presses)} Yijian's ` +
        `| peak RSS: peer ${ratio(n.gateway_peak_rss_kb, y.gateway_peak_rss_kb)} Yijian's |`);
}
const my = maxes.find((m) => m.system === "yijian"), mn = maxes.find((m) => m.system === "peer");
if (lines.length || (my && mn)) {
    p("## Side by side");
    p();
    p("Targets (issue 3): Yijian at least 5× the peer's maximum throughput, and at most one fifth of its p99 at equal load.");
    p();
    if (lines.length) {
        p("Each ratio is the peer's figure over Yijian's (for the latency target: 5× or more).");
        p();
        p("| offered | latency | CPU | memory |");
        p("| --- | --- | --- | --- |");
        lines.forEach((l) => p(l));
        p();
    }
    if (my && mn) {
        p(`Maximum: Yijian held ${my.held ? int(my.held) + "/s" : "no rate"}, the peer ${mn.held ? int(mn.held) + "/s" : "no rate"}` +
            (my.held && mn.held ? `: Yijian ${ratio(my.held, mn.held)} the peer's.` : "."));
        p();
    }
}

p("## What each side guarantees");
p();
p("- **Yijian** journals every press in SQLite (WAL, `synchronous=FULL`, group commit: fsync'd) *before* it answers `received`; " +
    "a retransmitted press gets the same request (unique device id + press id); the outbox is replayed after a crash; failed backends are " +
    "retried with backoff, failed over, and the request escalates to a human operator (`desk`) at the service deadline.");
p("- **Mosquitto + Node-RED** (bench/peer/): Mosquitto PUBACKs a press once it is in memory (persistence off: Mosquitto's persistence is a " +
    "periodic snapshot, never a per-message fsync); Node-RED's MQTT client PUBACKs it on arrival, before the flow runs, and the flow answers " +
    "`received` with the press only in Node-RED's memory. A device stops retransmitting once it hears `received`, so a crash of Node-RED " +
    "between `received` and the backend's 2xx loses the press. Retries (8 attempts, jittered backoff) live in memory; nothing escalates to a " +
    "human. A press is never booked twice only because the flow derives the Idempotency-Key from device id + press id and the backend honours it.");
p();
p("## Reading the table");
p();
p("- *throughput*: presses with a final answer (`dispatched`, or `escalated` to the desk) per second of pressing; answers that came during " +
    "the drain count too, so an overloaded system shows its lateness in the latency columns, not here.");
p("- *press → backend*: from the press's send time (device clock = backend clock, same machine) to its first arrival at the mock backend; " +
    "*press → received / dispatched*: until the device hears it. Quantiles from HDR histograms.");
p("- *CPU s / 1,000 presses*: user + system CPU of the system under test (the gateway; for the peer Mosquitto and Node-RED together) " +
    "from the end of the connect ramp to the end of the drain, per 1,000 presses sent. *Peak RSS*: VmHWM, summed over the peer's two " +
    "processes (an upper bound: they need not peak together).");
p("- *lost*: presses without a final answer after the drain. *doubled*: presses that became two different requests. The sim exits 2 on either.");
p("- Each run starts its system afresh; one run per cell; the sim, the mock backends and the system share the machine's cores.");
process.stdout.write(out.join("\n") + "\n");
