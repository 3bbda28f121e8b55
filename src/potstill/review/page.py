"""The review page: plain HTML and JavaScript, no build step. Text is set with textContent, never
innerHTML, so an input holding markup is shown, not run."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>potstill review</title>
<style>
 body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f5f2;color:#222}
 /* The hidden attribute is only the browser's own display:none, which any display rule (.row's flex)
    overrides: without this the empty "corrected" row showed on every record. */
 [hidden]{display:none!important}
 header{display:flex;gap:24px;align-items:center;padding:12px 24px;background:#2d3a3a;color:#fff}
 header h1{font-size:18px;margin:0} #bar{flex:1;height:10px;background:#556;border-radius:5px;overflow:hidden}
 #fill{height:100%;background:#8fd18f;width:0}
 main{max-width:860px;margin:24px auto;padding:0 24px}
 .card{background:#fff;border-radius:8px;padding:20px 24px;box-shadow:0 1px 3px #0002}
 #text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:18px;margin:8px 0 16px}
 .row{display:flex;gap:12px;align-items:baseline;margin:6px 0} .k{color:#777;width:120px;flex:none}
 .row>span:not(.k){min-width:0;overflow-wrap:anywhere}
 #output{font-weight:700;font-size:18px;white-space:pre-wrap} .dec{padding:2px 10px;border-radius:12px;font-weight:600}
 .accept{background:#d8f0d8} .reject{background:#f6d4d4} .relabel{background:#f3e6c4} .edit{background:#d6e4f5}
 #edited{font-weight:700;font-size:18px;white-space:pre-wrap}
 #editor textarea{width:100%;box-sizing:border-box;min-height:9em;font:15px/1.4 ui-monospace,monospace;margin-top:6px}
 #keys{margin-top:18px;color:#555} kbd{background:#eee;border:1px solid #bbb;border-radius:4px;padding:0 6px;font-size:14px}
 #context,#after{border-left:3px solid #ccc;padding-left:12px;margin:8px 0;color:#444}
 .turn{white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0} .turn .role{color:#777;margin-right:8px}
 #labels span{margin-right:14px} #msg{color:#a33;min-height:1.5em}
 #picker select{min-width:16em;font:15px/1.4 system-ui,sans-serif;margin-top:6px}
</style></head>
<body>
<header><h1>potstill review</h1><div id="progress">loading…</div><div id="bar"><div id="fill"></div></div>
<div>teacher error rate so far: <b id="errrate">–</b></div></header>
<main><div class="card">
 <div class="row"><span class="k">record</span><span id="pos"></span><span id="rid" style="color:#999"></span></div>
 <div id="context" hidden></div>
 <div class="row"><span class="k">input</span></div><div id="text" dir="auto"></div>
 <div id="after" hidden></div>
 <div class="row"><span class="k">teacher says</span><span id="output" dir="auto"></span></div>
 <div class="row"><span class="k">gold label</span><span id="gold"></span></div>
 <div class="row"><span class="k">slices</span><span id="slice"></span></div>
 <div class="row"><span class="k">samples</span><span id="samples"></span></div>
 <div class="row"><span class="k">decision</span><span id="decision"></span></div>
 <div class="row" id="editedrow" hidden><span class="k">corrected</span><span id="edited" dir="auto"></span></div>
 <div id="editor" hidden><textarea id="edittext" spellcheck="false" aria-label="corrected answer"></textarea>
  <div><button id="save">save</button> <kbd>Ctrl</kbd>+<kbd>Enter</kbd> save &nbsp; <kbd>Esc</kbd> cancel</div></div>
 <div id="picker" hidden><select id="pick" size="8" aria-label="relabel to"></select>
  <div><kbd>Enter</kbd> relabel &nbsp; <kbd>Esc</kbd> cancel</div></div>
 <div id="keys"><kbd>a</kbd> accept &nbsp; <kbd>r</kbd> reject &nbsp; <span id="relabelkeys">relabel: <span id="labels"></span>
  <kbd>l</kbd> any label<span id="morelabels"></span></span>
  <span id="editkey"><kbd>e</kbd> edit the answer</span> &nbsp; <kbd>←</kbd>/<kbd>→</kbd> previous/next</div>
 <div id="msg"></div>
</div></main>
<script>
let S = null, i = 0, sending = Promise.resolve();
// The record whose answer is open in the editor (its id), or null: keys typed there are text, not decisions.
let editing = null;
// The record whose label list (l) is open, or null: keys typed there pick a label, they are not decisions.
let picking = null;
// Decisions sent and not yet answered: the page moves on as a key is pressed, not when the server
// answers, so a reviewer typing ahead judges the record on screen and never the previous one again.
const pending = new Map();
// After the page changes what it shows on its own (back to a refused decision's record, another tab's
// decision on the record on screen), decision keys wait until the keys pause: a key pressed just then
// was typed ahead for the record the reviewer had seen, and would judge one they had not (it carries
// the decision now shown as seen, so the server would take it). Each key ignored restarts the wait, so
// a burst typed blind decides nothing; 500 ms is twice a reaction to something seen (about 250 ms),
// and the keys typed ahead came 40-150 ms after the change.
const HOLD_MS = 500;
let heldUntil = 0, heldWhy = "";
function hold(why) { heldUntil = performance.now() + HOLD_MS; heldWhy = why; }
const $ = id => document.getElementById(id);
// A text in its own direction: unisolated, a right-to-left label (Hebrew, Arabic) and the key number
// beside it joined one right-to-left run, so "1 ספורט 2 טכנולוגיה" showed each number beside another
// label, and a reviewer relabelled with the wrong key.
const bdi = text => { const b = document.createElement("bdi"); b.textContent = text; return b; };
const isolated = (texts, sep) => texts.flatMap((t, j) => j ? [sep, bdi(t)] : [bdi(t)]);
function render() {
  const it = S.items[i], p = S.progress;
  $("progress").textContent = `${p.reviewed} / ${p.total} reviewed`;
  $("fill").style.width = (100 * p.reviewed / p.total) + "%";
  $("errrate").textContent = p.teacher_error_rate === null ? "–" : (100 * p.teacher_error_rate).toFixed(1) + "%";
  $("pos").textContent = `${i + 1} of ${S.items.length}`; $("rid").textContent = it.id;
  // A conversation's earlier turns, above its last message (the input), and the calls and tool
  // results after it (an agent's turns): what the teacher read.
  const turns = ms => ms.map(m => {
    const t = document.createElement("div"), r = document.createElement("span");
    t.className = "turn"; r.className = "role"; r.textContent = m.role; t.append(r, bdi(m.text)); return t; });
  $("context").replaceChildren(...turns(it.context)); $("context").hidden = !it.context.length;
  $("after").replaceChildren(...turns(it.after)); $("after").hidden = !it.after.length;
  $("text").textContent = it.text; $("output").textContent = it.output;
  $("gold").textContent = it.gold ?? "(none)";
  $("slice").replaceChildren(...(it.slice.length ? isolated(it.slice, ", ") : ["(none)"]));
  $("samples").replaceChildren(...(it.samples ? [...isolated(it.samples, " | "), ` (agreement ${it.agreement ?? "?"})`]
                                              : ["(one answer)"]));
  const d = it.decision, el = $("decision");
  el.className = d ? "dec " + d.decision : ""; el.textContent = d ? (d.decision === "relabel" ? `relabel → ${d.label}` : d.decision) : "not yet";
  el.dataset.decision = d ? d.decision : "";
  $("editedrow").hidden = !(d && d.decision === "edit"); $("edited").textContent = d && d.decision === "edit" ? d.output : "";
  if (editing !== null && editing !== it.id) closeEditor();  // the record on screen changed under the editor
  if (picking !== null && picking !== it.id) closePicker();
  $("relabelkeys").hidden = !S.labels.length; $("editkey").hidden = !!S.labels.length;
  $("labels").replaceChildren(...S.labels.slice(0, 9).map((l, j) => {
    const s = document.createElement("span"); const k = document.createElement("kbd");
    k.textContent = j + 1; s.append(k, " ", bdi(l)); return s; }));
  // Keys 1-9 reach the first nine labels; the rest are named here and picked from the list (l).
  $("morelabels").replaceChildren(...(S.labels.length > 9 ? [" (also ", ...isolated(S.labels.slice(9), ", "), ")"] : []));
  document.body.dataset.ready = "1";
}
function adopt(state) {  // the server's state, with the decisions still on their way laid over it
  for (const it of state.items) if (pending.has(it.id)) it.decision = pending.get(it.id);
  S = state;
}
// A decision's answer: the decisions changed since S.version (own: the one this page sent; any made in
// another tab), the progress and the new version; a decision still on its way stays as the page shows it.
function merge(body, own) {
  for (const [id, d] of Object.entries(body.decisions)) {
    const it = S.items.find(x => x.id === id);
    if (!it || pending.has(id)) continue;
    if (id !== own && it === S.items[i] && JSON.stringify(shown(it.decision)) !== JSON.stringify(shown(d)))
      hold(`record ${id} was just decided in another tab (${d ? said(d) : "no decision"}): the page now shows it`);
    it.decision = d;
  }
  S.progress = body.progress; S.version = body.version;
}
async function load() { adopt(await (await fetch("api/state")).json()); render(); }
// The decision a record shows, as the server compares it: a decision made since in another tab is
// then refused rather than replaced unseen.
const shown = d => d ? {decision: d.decision, label: d.label ?? null, output: d.output ?? null} : null;
const said = d => d.decision === "relabel" ? `relabel to ${d.label}` : d.decision;
function decide(decision, label) {
  const it = S.items[i], d = {decision, label: label ?? null}, previous = shown(it.decision);
  it.decision = d; pending.set(it.id, d); $("msg").textContent = "";
  const next = S.items.findIndex((x, j) => j > i && !x.decision);
  if (next >= 0) i = next; else if (i < S.items.length - 1) i++;
  render();
  sending = sending.then(() => send(it.id, d, previous));  // in order: a changed mind reaches the store last
}
// An edit: the editor opens with the teacher's answer (or the correction saved before); saving
// waits for the server, which checks the text as curate checks a teacher answer, and on a refusal
// the editor stays open with the text and the reason, so nothing typed is lost.
function openEditor() {
  const it = S.items[i], d = it.decision;
  editing = it.id; $("msg").textContent = "";
  $("edittext").value = d && d.decision === "edit" ? d.output : it.output;
  $("edittext").disabled = false; $("editor").hidden = false; $("edittext").focus();
}
// The whole label set in a list: arrows or the label's first letters pick one, Enter relabels.
function openPicker() {
  const it = S.items[i], d = it.decision;
  picking = it.id; $("msg").textContent = "";
  $("pick").replaceChildren(...S.labels.map(l => { const o = document.createElement("option"); o.value = o.textContent = l; return o; }));
  const now = d && d.decision === "relabel" ? d.label : it.output;
  $("pick").selectedIndex = Math.max(0, S.labels.indexOf(now));
  $("picker").hidden = false; $("pick").focus();
}
function closePicker() { picking = null; $("picker").hidden = true; $("pick").blur(); }
function pick() {
  const label = $("pick").value, id = picking;
  closePicker();
  if (label && id === S.items[i].id) decide("relabel", label);
}
function closeEditor() { editing = null; $("editor").hidden = true; $("edittext").blur(); }
async function saveEdit() {
  const id = editing, output = $("edittext").value, previous = shown(S.items.find(x => x.id === id).decision);
  if (id === null || $("edittext").disabled) return;
  $("edittext").disabled = true;
  let r = null, body = null;
  await (sending = sending.then(async () => {
    try {
      r = await fetch("api/decisions", {method: "POST", headers: {"content-type": "application/json"},
                                        body: JSON.stringify({id, decision: "edit", output, previous, since: S.version})});
      body = await r.json();
    } catch (e) {}
  }));
  const open = editing === id;  // not cancelled (Esc) while the server checked it
  $("edittext").disabled = false;
  if (!(r && r.ok && body && body.decisions)) {
    if (r && r.status === 409) { try { await load(); } catch (e) {} }  // the decision made in another tab
    $("msg").textContent = `record ${id} not saved: ` + (body?.error?.message ?? "the review server did not answer");
    if (open) $("edittext").focus();
    return;
  }
  merge(body, id); $("msg").textContent = "";
  if (open) {
    closeEditor();
    const at = S.items.findIndex(x => x.id === id);
    const next = S.items.findIndex((x, j) => j > at && !x.decision);
    i = next >= 0 ? next : Math.min(at + 1, S.items.length - 1);
  }
  render();
}
async function send(id, d, previous) {
  let r = null, body = null;
  try {
    r = await fetch("api/decisions", {method: "POST", headers: {"content-type": "application/json"},
                                      body: JSON.stringify({id, decision: d.decision, label: d.label, previous,
                                                            since: S.version})});
    body = await r.json();
  } catch (e) {}
  if (pending.get(id) === d) pending.delete(id);
  if (r && r.ok && body && body.decisions) { merge(body, id); render(); return; }
  // Not saved: show that record again as the server holds it, then say so (said last, so that when the
  // message shows, the page is already back on the record it names).
  const why = `record ${id} not saved: ` + (body?.error?.message ?? "the review server did not answer");
  try { await load(); } catch (e) { const it = S.items.find(x => x.id === id); if (!pending.has(id)) it.decision = null; }
  // Back to that record, unless a correction is being typed: the jump would close the editor and
  // lose the text; the message names the record to go back to.
  if (editing === null) { i = Math.max(0, S.items.findIndex(x => x.id === id)); hold(why); }
  render();
  $("msg").textContent = why;
}
document.addEventListener("keydown", e => {
  if (!S) return;
  if (editing !== null) {  // typing a correction: only save and cancel are keys, every other key is text
    if (e.key === "Escape") {
      e.preventDefault();
      // A correction already sent is not withdrawn by closing the box: say so rather than seem to cancel it.
      if ($("edittext").disabled) $("msg").textContent = "saving the correction: it cannot be cancelled now";
      else closeEditor();
    }
    else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveEdit(); }
    return;
  }
  if (picking !== null) {  // the label list: the list takes every key but these two
    if (e.key === "Escape") { e.preventDefault(); closePicker(); }
    else if (e.key === "Enter") { e.preventDefault(); pick(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.repeat && /^[are1-9]$/.test(e.key)) return;  // a decision key held down must not sweep through the records
  if (/^[arle1-9]$/.test(e.key) && performance.now() < heldUntil) {
    e.preventDefault(); hold(heldWhy);
    $("msg").textContent = `${heldWhy}; the key pressed as it changed was not used: look, then press again`;
    return;
  }
  if (e.key === "e" && !S.labels.length) { e.preventDefault(); openEditor(); }  // preventDefault: no "e" typed in
  else if (e.key === "a") decide("accept");
  else if (e.key === "r") decide("reject");
  else if (/^[1-9]$/.test(e.key) && S.labels[+e.key - 1]) decide("relabel", S.labels[+e.key - 1]);
  else if (e.key === "l" && S.labels.length) { e.preventDefault(); openPicker(); }
  else if (e.key === "ArrowRight" || e.key === "j") { i = Math.min(i + 1, S.items.length - 1); render(); }
  else if (e.key === "ArrowLeft" || e.key === "k") { i = Math.max(i - 1, 0); render(); }
});
$("save").addEventListener("click", saveEdit);
$("pick").addEventListener("dblclick", pick);
$("pick").addEventListener("blur", () => { if (picking !== null) closePicker(); });  // clicked away: keys decide again
load();
</script></body></html>
"""
