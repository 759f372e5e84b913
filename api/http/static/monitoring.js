/* CAMI regional dashboard (/monitoring) and an organisation's page (/monitoring/{code}).
 *
 * Plain JavaScript, nothing from outside the archive. The dashboard renders the snapshot embedded
 * in the page, then each snapshot the server pushes on /api/monitoring/stream (Server-Sent Events,
 * with the session cookie), in place: the page is never reloaded. The organisation page draws its
 * throughput with uPlot when /static/vendor/uplot is installed.
 */
"use strict";

(function () {
  const RU = {
    "link.up": "связь есть", "link.down": "нет связи", "link.unknown": "связь неизвестна", "link.": "—",
    "no-agent": "без агента", "nothing": "—", "ago": "с назад", "waiting": "ждёт с",
    "alarm.silent-sender": "Организация молчит дольше обычного",
    "alarm.agent-silent": "Агент не присылает сигналы",
    "alarm.stalled-transfer": "Передача зависла",
    "quiet": "тишина", "allowed": "норма до", "no-alarms": "Тревог нет.",
    "live.open": "в реальном времени", "live.lost": "соединение потеряно, переподключение…",
    "unknown": "нет в региональном справочнике",
  };
  function tr(key) { return Object.prototype.hasOwnProperty.call(RU, key) ? RU[key] : key; }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const child of children || []) if (child !== null) node.appendChild(child);
    return node;
  }

  function bytes(n) {
    const units = ["Б", "КБ", "МБ", "ГБ", "ТБ"];
    let value = Number(n) || 0, i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return (i ? value.toFixed(1) : String(value)) + " " + units[i];
  }
  function time(iso) { return iso ? String(iso).replace("T", " ").slice(0, 19) : tr("nothing"); }
  function seconds(s) {
    if (s === null || s === undefined) return tr("nothing");
    s = Math.round(Number(s));
    if (s < 120) return s + " с";
    if (s < 7200) return Math.round(s / 60) + " мин";
    return (s / 3600).toFixed(1) + " ч";
  }

  function orgCell(row) {
    const link = el("a", { href: "/monitoring/" + encodeURIComponent(row.organisation), text: row.organisation_name,
      class: "org" + (row.organisation_known ? "" : " unknown"), "data-code": row.organisation,
      title: row.organisation_known ? row.organisation : row.organisation + " — " + tr("unknown") });
    return el("td", {}, [link]);
  }

  function rowsOf(snapshot) {
    const out = [];
    for (const org of snapshot.organisations) {
      const agents = org.agents.length ? org.agents : [null];
      agents.forEach(function (agent, index) {
        const alarmed = org.alarms.some(function (a) { return !a.agent_id || (agent && a.agent_id === agent.agent_id); });
        const tr_ = el("tr", { "data-organisation": org.organisation, "data-agent": agent ? agent.agent_id : "",
          class: alarmed ? "alarmed" : "" });
        tr_.appendChild(index === 0 ? orgCell(org) : el("td", {}));
        if (agent) {
          tr_.appendChild(el("td", { class: "agent" }, [
            el("span", { text: agent.agent_id + " · " }),
            el("span", { class: "link link-" + (agent.link_state || "none"), "data-link": agent.link_state,
              text: tr("link." + agent.link_state) })]));
          tr_.appendChild(el("td", { class: "heartbeat nowrap", "data-age": agent.heartbeat_age_s,
            text: time(agent.last_heartbeat) + " (" + seconds(agent.heartbeat_age_s) + ")" }));
          const oldest = agent.oldest_waiting_at && agent.queue_depth ? " · " + tr("waiting") + " " + time(agent.oldest_waiting_at) : "";
          tr_.appendChild(el("td", { class: "queue", "data-queue": agent.queue_depth,
            text: agent.queue_depth + " (" + bytes(agent.queue_bytes) + ")" + oldest }));
        } else {
          tr_.appendChild(el("td", { class: "agent", text: tr("no-agent") }));
          tr_.appendChild(el("td", { text: tr("nothing") }));
          tr_.appendChild(el("td", { text: tr("nothing") }));
        }
        if (index === 0) {
          const today = org.today;
          tr_.appendChild(el("td", { class: "today" }, [
            el("span", { class: "today-studies", text: today.studies }), el("span", { text: " / " }),
            el("span", { class: "today-instances", text: today.instances }), el("span", { text: " / " }),
            el("span", { class: "today-bytes", text: bytes(today.bytes) })]));
          const flights = org.in_flight.map(function (t) {
            const pct = t.progress === null ? "" : " " + Math.round(t.progress * 100) + "%";
            return el("div", { class: "transfer" + (t.priority === "emergency" ? " emergency" : ""),
              "data-transfer": t.transfer_id, "data-arrived": t.instances_arrived,
              text: t.instances_arrived + "/" + t.instances + pct });
          });
          tr_.appendChild(el("td", { class: "in-flight", "data-count": org.in_flight.length },
            flights.length ? flights : [document.createTextNode(tr("nothing"))]));
          const f = org.failures_last_hour;
          tr_.appendChild(el("td", { class: "failures", text: f.transfers + " / " + f.rejections,
            title: "передачи / отказы при приёме" }));
          tr_.appendChild(el("td", { class: "incomplete", text: org.incomplete_packages }));
          const e = org.emergency;
          const delivery = e.delivered_today ? " (" + seconds(e.delivery_median_s) + ", макс. " + seconds(e.delivery_max_s) + ")" : "";
          tr_.appendChild(el("td", { class: "emergency", text: e.waiting + " / " + e.delivered_today + delivery }));
        } else {
          for (let i = 0; i < 5; i += 1) tr_.appendChild(el("td", {}));
        }
        out.push(tr_);
      });
    }
    return out;
  }

  function alarmsOf(snapshot) {
    if (!snapshot.alarms.length) return [el("p", { class: "hint", id: "no-alarms", text: tr("no-alarms") })];
    return snapshot.alarms.map(function (a) {
      const who = a.organisation_name + (a.agent_id ? " · " + a.agent_id : "") + (a.transfer_id ? " · " + a.transfer_id : "");
      return el("div", { class: "alarm", "data-kind": a.kind, "data-organisation": a.organisation,
        "data-agent": a.agent_id || "" }, [
        el("strong", { text: tr("alarm." + a.kind) + ": " }),
        el("span", { text: who + " — " + tr("quiet") + " " + seconds(a.quiet_s) + ", " + tr("allowed") + " " + seconds(a.allowed_s) })]);
    });
  }

  function render(snapshot) {
    document.getElementById("dashboard-rows").replaceChildren(...rowsOf(snapshot));
    document.getElementById("alarms").replaceChildren(...alarmsOf(snapshot));
    document.getElementById("updated-at").textContent = time(snapshot.now);
    window.camiSnapshots = (window.camiSnapshots || 0) + 1;
    document.body.setAttribute("data-snapshots", String(window.camiSnapshots));
  }

  function dashboard(data) {
    render(data.snapshot);
    const state = document.getElementById("live-state");
    const source = new EventSource("/api/monitoring/stream");
    source.addEventListener("open", function () { state.textContent = tr("live.open"); state.setAttribute("data-state", "open"); });
    source.addEventListener("error", function () { state.textContent = tr("live.lost"); state.setAttribute("data-state", "lost"); });
    source.addEventListener("snapshot", function (event) { render(JSON.parse(event.data)); });
  }

  function organisation(data) {
    const target = document.getElementById("throughput-chart");
    if (!target || typeof window.uPlot !== "function") return;
    const xs = [], instances = [], rejections = [];
    for (const m of data.minutes) {
      xs.push(Date.parse(m.minute) / 1000); instances.push(m.instances); rejections.push(m.rejections);
    }
    const options = {
      width: Math.min(1200, target.clientWidth || 1200), height: 280,
      series: [{}, { label: "снимков", stroke: "#0b5cad", width: 2 }, { label: "отказов", stroke: "#a3141e", width: 2 }],
      axes: [{}, { label: "в минуту" }],
    };
    new window.uPlot(options, [xs, instances, rejections], target);
    target.setAttribute("data-drawn", String(xs.length));
  }

  function start() {
    const node = document.getElementById("cami-data");
    const data = node ? JSON.parse(node.textContent) : {};
    if (data.page === "monitoring") dashboard(data);
    else if (data.page === "organisation") organisation(data);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
