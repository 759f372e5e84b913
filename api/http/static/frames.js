/* CAMI viewer: the frames of a series, fetched for the link they travel over.
 *
 * A doctor's link may be 256 kbit/s (the regional minimum) with 100 ms of latency. So the viewer
 * never waits for one full-size picture after another:
 *  - while scrolling it asks for previews: JPEG at the size the picture is drawn, smaller and
 *    coarser when the measured link is slow; when the doctor stops, the slice shown is refined to
 *    full quality (lossless PNG at full resolution); "full quality" mode asks only for that;
 *  - the frames around the slice shown are fetched ahead in both directions (more in the direction
 *    of travel), a bounded number of requests at a time; the slice under the cursor always goes
 *    first, and a frame the doctor has scrolled past is never waited for;
 *  - frame URLs name the instance's content (v), so the browser keeps them for the session and a
 *    second visit costs nothing.
 * The loader knows nothing of the page: CamiFrames.Loader is given a function that makes the URL
 * of frame i in a kind ("preview" or "full"), and reports what it has loaded.
 */
"use strict";

(function () {
  const KINDS = ["preview", "full"];
  // the preview sizes asked for (a few steps, so a resized window does not make every URL new)
  const STEPS = [128, 256, 384, 512, 768, 1024, 1536, 2048];

  // previews by measured link rate (bytes per millisecond = kB/s): [below rate, longest side, JPEG quality]
  const TIERS = [[48, 256, 60], [160, 384, 70], [640, 768, 80], [Infinity, 2048, 85]];

  function Loader(options) {
    this.maxInFlight = options.maxInFlight || 4;
    this.prefetch = options.prefetch !== false;
    this.refineAfter = options.refineAfter || 300;
    this.limit = options.limit || 600;  // renditions kept as blob: URLs (oldest revoked)
    this.onChange = options.onChange || function () {};
    this.full = false;
    this.entries = new Map();   // key -> {url, blobUrl, bytes, kind, index}
    this.inflight = new Map();  // key -> {controller, index, kind}
    this.failed = new Map();    // key -> message
    this.sequence = null;       // {id, count, urlFor}
    this.target = 0;
    this.direction = 1;
    this.lastMove = 0;
    this.timer = null;
    this.pinned = null;         // the blob: URL on screen: never revoked
    this.received = [];         // the last responses that came over the link: {start, end, bytes}
    this.known = remembered();  // the link as last measured in this browser, until this page measures it
    this.totals = { bytes: 0, requests: 0 };
  }

  Loader.prototype.key = function (index, kind) {
    return this.sequence.id + "|" + index + "|" + kind;
  };

  // -- the link -----------------------------------------------------------------------------------
  // bytes received per millisecond while bytes were arriving (the union of the recent responses'
  // receiving spans, so neither latency nor requests in parallel distort it); null until measured
  Loader.prototype.rate = function () {
    if (this.received.length < 2) return this.known;
    const spans = this.received.slice().sort(function (a, b) { return a.start - b.start; });
    let bytes = 0, union = 0, start = spans[0].start, end = spans[0].end;
    spans.forEach(function (s) {
      bytes += s.bytes;
      if (s.start > end) { union += end - start; start = s.start; end = s.end; } else end = Math.max(end, s.end);
    });
    union += end - start;
    return bytes >= 4096 ? bytes / Math.max(union, 1) : this.known;
  };

  // the rate is kept in the browser for a while: a second visit then asks for the same previews as
  // the first (which the browser's cache holds) instead of starting small again
  const REMEMBER_MS = 12 * 3600 * 1000;

  function remembered() {
    try {
      const saved = JSON.parse(window.localStorage.getItem("cami.viewer.link") || "null");
      return saved && Date.now() - saved.at < REMEMBER_MS && saved.rate > 0 ? saved.rate : null;
    } catch (e) {
      return null;
    }
  }

  function remember(rate) {
    try { window.localStorage.setItem("cami.viewer.link", JSON.stringify({ rate: rate, at: Date.now() })); } catch (e) { /* ignore */ }
  }

  const TIERS_KEPT = 500;

  function rememberedTier(name) {
    try {
      const saved = JSON.parse(window.localStorage.getItem("cami.viewer.tiers") || "{}")[name];
      return saved && Date.now() - saved[1] < REMEMBER_MS && TIERS[saved[0]] ? saved[0] : null;
    } catch (e) {
      return null;
    }
  }

  function rememberTier(name, tier) {
    try {
      const all = JSON.parse(window.localStorage.getItem("cami.viewer.tiers") || "{}");
      delete all[name];
      all[name] = [tier, Date.now()];
      const names = Object.keys(all);
      for (let i = 0; i < names.length - TIERS_KEPT; i++) delete all[names[i]];
      window.localStorage.setItem("cami.viewer.tiers", JSON.stringify(all));
    } catch (e) { /* storage disabled or full: previews are chosen afresh next time */ }
  }

  // a response's Resource Timing: when its bytes arrived, and how many crossed the wire (0: the cache answered)
  function timing(url) {
    const entries = performance.getEntriesByName(new URL(url, window.location.href).href, "resource");
    return entries.length ? entries[entries.length - 1] : null;
  }

  // the previews of the current series: chosen by the measured link once a few responses came over
  // it, then kept for the series (and remembered in the browser, so a second visit asks for the very
  // URLs the cache holds); until then, by the link as last measured
  Loader.prototype.tier = function () {
    if (this.sequence && this.sequence.tier !== null) return this.sequence.tier;
    const rate = this.rate();
    return TIERS.findIndex(function (t) { return (rate === null ? 0 : rate) < t[0]; });
  };

  // the preview asked for a frame of cols x rows drawn at `drawn` device pixels (longest side)
  Loader.prototype.preview = function (cols, rows, drawn) {
    const tier = TIERS[this.tier()];
    const longest = Math.max(cols || 512, rows || 512);
    let side = STEPS.find(function (s) { return s >= drawn; }) || STEPS[STEPS.length - 1];
    side = Math.min(side, tier[1], longest);
    const scale = side / longest;
    return {
      width: Math.max(1, Math.round((cols || longest) * scale)),
      height: Math.max(1, Math.round((rows || longest) * scale)),
      quality: tier[2],
    };
  };

  // -- what is loaded -------------------------------------------------------------------------------
  // `id` names the frames (a series in a window), `name` the series (its previews' size is kept)
  Loader.prototype.setSequence = function (id, count, urlFor, name) {
    if (this.sequence && this.sequence.id === id) return;
    const tier = name ? rememberedTier(name) : null;
    this.sequence = { id: id, count: count, urlFor: urlFor, name: name, tier: tier, measured: 0 };
    this.inflight.forEach(function (request) { request.controller.abort(); });  // another series or window
    this.inflight.clear();
    this.target = 0;
    this.schedule();
  };

  Loader.prototype.best = function (index) {
    if (!this.sequence) return null;
    const full = this.entries.get(this.key(index, "full"));
    if (full) return full;
    return this.full ? null : this.entries.get(this.key(index, "preview")) || null;
  };

  // the loaded slice nearest to index (-1: none yet)
  Loader.prototype.nearest = function (index) {
    if (!this.sequence) return -1;
    for (let d = 0; d < this.sequence.count; d++) {
      if (index + d < this.sequence.count && this.anyLoaded(index + d)) return index + d;
      if (d && index - d >= 0 && this.anyLoaded(index - d)) return index - d;
    }
    return -1;
  };

  Loader.prototype.anyLoaded = function (index) {
    return this.entries.has(this.key(index, "full")) || this.entries.has(this.key(index, "preview"));
  };

  Loader.prototype.error = function (index) {
    const self = this;
    const found = KINDS.map(function (k) { return self.failed.get(self.key(index, k)); }).filter(Boolean);
    return found.length ? found[0] : null;
  };

  Loader.prototype.pin = function (blobUrl) { this.pinned = blobUrl; };

  // -- moving -----------------------------------------------------------------------------------------
  Loader.prototype.setTarget = function (index) {
    if (index !== this.target) this.direction = index > this.target ? 1 : -1;
    this.target = index;
    this.lastMove = performance.now();
    this.schedule();
  };

  Loader.prototype.setFull = function (full) {
    this.full = full;
    this.schedule();
  };

  Loader.prototype.idle = function () {
    return performance.now() - this.lastMove >= this.refineAfter;
  };

  Loader.prototype.schedule = function () {
    const self = this;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pump();
    if (!this.idle()) {
      this.timer = setTimeout(function () { self.timer = null; self.pump(); }, this.refineAfter - (performance.now() - this.lastMove) + 5);
    }
  };

  // what should be loaded, most wanted first: [index, kind]
  Loader.prototype.wanted = function () {
    const out = [];
    const count = this.sequence.count;
    const t = this.target;
    const kind = this.full ? "full" : "preview";
    if (!this.best(t)) out.push([t, kind]);
    else if (!this.full && this.idle() && !this.entries.has(this.key(t, "full"))) out.push([t, "full"]);
    if (!this.prefetch) return out;
    // ahead two for each one behind, as far as the kept renditions allow (a long series is not
    // fetched whole only to be forgotten again)
    const dir = this.direction;
    const ahead = Math.min(count, Math.floor(this.limit / 4)), behind = Math.floor(ahead / 2);
    for (let a = 1, b = 1; a <= ahead || b <= behind;) {
      for (let i = 0; i < 2; i++, a++) if (a <= ahead) out.push([t + dir * a, kind]);
      if (b <= behind) out.push([t - dir * b, kind]);
      b++;
    }
    return out.filter(function (w) { return w[0] >= 0 && w[0] < count; });
  };

  Loader.prototype.pump = function () {
    if (!this.sequence || !this.sequence.count) return;
    const self = this;
    const t = this.target;
    // a refinement of a slice the doctor has left is of no use any more
    this.inflight.forEach(function (request, key) {
      if (request.kind === "full" && !self.full && request.index !== t) {
        request.controller.abort();
        self.inflight.delete(key);
      }
    });
    const wanted = this.wanted();
    const targetMissing = !this.best(t);
    const refining = this.inflight.has(this.key(t, "full")) && !this.full;
    for (let i = 0; i < wanted.length; i++) {
      const index = wanted[i][0], kind = wanted[i][1];
      const key = this.key(index, kind);
      if (this.entries.has(key) || this.inflight.has(key) || this.failed.has(key)) continue;
      if (kind === "preview" && this.entries.has(this.key(index, "full"))) continue;
      const forTarget = index === t;
      if (!forTarget && (targetMissing || refining)) break;  // the slice on screen first, on its own
      if (this.inflight.size >= this.maxInFlight) {
        if (!forTarget) break;
        this.dropFarthest();
      }
      this.start(index, kind);
    }
  };

  // make room for the slice under the cursor: give up the prefetch farthest from it
  Loader.prototype.dropFarthest = function () {
    const t = this.target;
    let worst = null, worstKey = null;
    this.inflight.forEach(function (request, key) {
      if (request.index === t) return;
      if (!worst || Math.abs(request.index - t) > Math.abs(worst.index - t)) { worst = request; worstKey = key; }
    });
    if (worst) { worst.controller.abort(); this.inflight.delete(worstKey); }
  };

  Loader.prototype.start = function (index, kind) {
    const self = this;
    const sequence = this.sequence;
    const key = this.key(index, kind);
    const made = sequence.urlFor(index, kind);
    const controller = new AbortController();
    this.inflight.set(key, { controller: controller, index: index, kind: kind });
    this.totals.requests++;
    fetch(made.url, { credentials: "same-origin", headers: { Accept: made.accept }, signal: controller.signal })
      .then(function (r) {
        if (!r.ok) {
          const error = new Error("HTTP " + r.status);
          error.status = r.status;
          throw error;
        }
        return r.blob();
      })
      .then(function (blob) {
        if (self.inflight.get(key) === undefined || self.sequence !== sequence) return;
        self.inflight.delete(key);
        // only what came over the link measures it: a picture from the browser's cache took no time
        const seen = timing(made.url);
        const wire = seen ? seen.transferSize : blob.size;
        if (wire > 0) {
          self.totals.bytes += wire;
          if (seen && seen.responseEnd > seen.responseStart) {
            self.received.push({ start: seen.responseStart, end: seen.responseEnd, bytes: wire });
            if (self.received.length > 24) self.received.shift();
            if (self.received.length >= 2) remember(self.rate());
          }
        }
        if (wire > 0 && ++sequence.measured >= 4 && sequence.tier === null) {
          sequence.tier = self.tier();
          if (sequence.name) rememberTier(sequence.name, sequence.tier);
        }
        self.remember(key, { url: made.url, blobUrl: URL.createObjectURL(blob), bytes: blob.size, kind: kind, index: index });
        self.onChange(index, kind);
        self.schedule();
      })
      .catch(function (e) {
        if (e && e.name === "AbortError") return;
        if (self.inflight.get(key) === undefined || self.sequence !== sequence) return;
        self.inflight.delete(key);
        self.failed.set(key, e && e.status ? e.status : "network");
        self.onChange(index, kind);
        if (!e || !e.status) setTimeout(function () { self.failed.delete(key); self.schedule(); }, 2000);  // a network blip: try again
        else self.schedule();
      });
  };

  Loader.prototype.remember = function (key, entry) {
    this.entries.set(key, entry);
    while (this.entries.size > this.limit) {
      let oldest = null;
      for (const k of this.entries.keys()) {
        if (this.entries.get(k).blobUrl !== this.pinned) { oldest = k; break; }
      }
      if (oldest === null) break;
      URL.revokeObjectURL(this.entries.get(oldest).blobUrl);
      this.entries.delete(oldest);
    }
  };

  window.CamiFrames = { Loader: Loader };
})();
