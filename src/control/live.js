"use strict";
// visiond's live player, shared by the status page and /view/<name>. It plays a pipeline's
// own H.264 (the daemon encodes nothing again for it): WebRTC through WHEP first (lowest
// latency), then fragmented MP4 over HTTP into Media Source Extensions (works wherever HTTP
// does), then the JPEG snapshot, saying which one it uses and why it fell back.
//
// `?live=webrtc`, `?live=mse` or `?live=off` in the page's address forces one; a view token
// (http.view_token_file) is given as `#token=…`, which never leaves the browser but as a
// header.
(function () {
  const params = new URLSearchParams(location.search);
  const mode = params.get("live") || "auto";
  const token = new URLSearchParams(location.hash.slice(1)).get("token");

  function headers(extra) {
    const all = Object.assign({}, extra || {});
    if (token) all.Authorization = "Bearer " + token;
    return all;
  }

  // The message of a JSON error answer, or its status.
  async function reason(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error;
    } catch (_) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  // No video decoded within this long: the way is given up.
  const FIRST_FRAME_MS = 8000;
  // After every way failed (or a stream ended), live is tried again after this long.
  const RETRY_MS = [3000, 10000, 30000];
  // MSE: playback a little behind the newest buffered frame catches up by playing faster;
  // further behind (a stall, a tab in the background) it jumps there. What is more than
  // KEEP_S behind the playhead is let go.
  const CATCH_UP_S = 0.25;
  const MAX_LAG_S = 1.0;
  const KEEP_S = 10;

  class LivePlayer {
    // `base`: the daemon's root relative to the page ("" or "../"); `onChange(via, reason)`
    // is told whenever the way changes.
    constructor(video, base, name, onChange) {
      this.video = video;
      this.name = name;
      this.api = base + "api/pipelines/" + encodeURIComponent(name) + "/";
      this.onChange = onChange || (() => {});
      this.via = "none";
      this.reason = "";
      this.frames = 0;
      this.failures = 0;
      this.generation = 0;
      video.muted = true;
      video.playsInline = true;
      this.countFrames();
    }

    // Frames presented, for whoever watches the player (and the first-frame check).
    countFrames() {
      if (!this.video.requestVideoFrameCallback) return;
      const tick = () => { this.frames++; this.video.requestVideoFrameCallback(tick); };
      this.video.requestVideoFrameCallback(tick);
    }

    set(via, why) {
      this.via = via;
      this.reason = why || "";
      this.onChange(via, this.reason);
    }

    async start() {
      const generation = ++this.generation;
      const ways = mode === "off" ? [] : mode === "webrtc" ? ["webrtc"] : mode === "mse" ? ["mse"] : ["webrtc", "mse"];
      const reasons = [];
      for (const way of ways) {
        try {
          if (way === "webrtc") await this.webrtc(generation);
          else await this.mse(generation);
          if (generation !== this.generation) return;
          await this.firstFrame(generation);
          this.failures = 0;
          this.set(way, "");
          return;
        } catch (error) {
          if (generation !== this.generation) return;
          this.teardown();
          reasons.push((way === "webrtc" ? "WebRTC: " : "MSE: ") + error.message);
        }
      }
      this.set("snapshot", mode === "off" ? "live view off (?live=off)" : reasons.join("; "));
      if (mode !== "off") this.retry(generation);
    }

    // Starts again later, after a failure or an end.
    retry(generation) {
      const wait = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
      this.failures++;
      setTimeout(() => { if (generation === this.generation) this.start(); }, wait);
    }

    // The way in use broke while playing: fall back now, live again soon.
    lost(generation, why) {
      if (generation !== this.generation) return;
      this.teardown();
      this.set("snapshot", why);
      this.retry(generation);
    }

    firstFrame(generation) {
      const before = this.frames;
      const started = performance.now();
      return new Promise((resolve, reject) => {
        const look = () => {
          if (generation !== this.generation) return reject(new Error("superseded"));
          const quality = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality() : null;
          if (this.frames > before || (quality && quality.totalVideoFrames > 0)) return resolve();
          if (performance.now() - started > FIRST_FRAME_MS) return reject(new Error("no video within " + FIRST_FRAME_MS / 1000 + " s"));
          setTimeout(look, 100);
        };
        look();
      });
    }

    async webrtc(generation) {
      if (!window.RTCPeerConnection) throw new Error("this browser has no WebRTC");
      const pc = new RTCPeerConnection({ iceServers: [] });
      this.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.ontrack = (event) => {
        this.video.srcObject = event.streams[0] || new MediaStream([event.track]);
        this.video.play().catch(() => {});
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          this.lost(generation, "WebRTC: the connection " + pc.connectionState);
        }
      };
      await pc.setLocalDescription(await pc.createOffer());
      // The offer goes whole (WHEP without trickle): wait for this side's candidates a moment.
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
        setTimeout(resolve, 1000);
      });
      const url = this.api + "whep";
      const response = await fetch(url, {
        method: "POST",
        headers: headers({ "Content-Type": "application/sdp" }),
        body: pc.localDescription.sdp,
      });
      if (response.status !== 201) throw new Error(await reason(response));
      const location = response.headers.get("Location");
      this.session = location ? new URL(location, new URL(url, document.baseURI)).href : null;
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    }

    async mse(generation) {
      if (!window.MediaSource) throw new Error("this browser has no Media Source Extensions");
      const abort = new AbortController();
      this.abort = abort;
      const response = await fetch(this.api + "live.mp4", { headers: headers(), cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error(await reason(response));
      const type = response.headers.get("Content-Type") || "";
      if (!MediaSource.isTypeSupported(type)) throw new Error("this browser cannot play " + type);
      const source = new MediaSource();
      this.video.src = URL.createObjectURL(source);
      await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
      const buffer = source.addSourceBuffer(type);
      const pending = [];
      const video = this.video;
      const pump = () => {
        if (buffer.updating || source.readyState !== "open") return;
        const end = buffer.buffered.length ? buffer.buffered.end(buffer.buffered.length - 1) : 0;
        // Stay at the live edge rather than play old frames late.
        const lag = end - video.currentTime;
        if (lag > MAX_LAG_S) video.currentTime = Math.max(0, end - 0.05);
        video.playbackRate = lag > CATCH_UP_S ? 1.1 : 1.0;
        if (video.paused) video.play().catch(() => {});
        if (buffer.buffered.length && video.currentTime - buffer.buffered.start(0) > 2 * KEEP_S) {
          buffer.remove(0, video.currentTime - KEEP_S);
          return;
        }
        if (pending.length) buffer.appendBuffer(pending.shift());
      };
      buffer.addEventListener("updateend", pump);
      buffer.addEventListener("error", () => this.lost(generation, "MSE: the browser refused the stream"));
      const reader = response.body.getReader();
      const read = async () => {
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (generation !== this.generation) return;
            if (done) return this.lost(generation, "MSE: the stream ended");
            pending.push(value);
            // A page that cannot append as fast as frames come starts over rather than grow.
            if (pending.length > 300) return this.lost(generation, "MSE: the browser fell behind");
            pump();
          }
        } catch (error) {
          if (generation === this.generation) this.lost(generation, "MSE: " + error.message);
        }
      };
      read();
      this.keepLive = setInterval(pump, 500);
    }

    // Leaves whatever way is in use: the WHEP session is deleted, the MSE stream aborted.
    teardown() {
      if (this.pc) { this.pc.close(); this.pc = null; }
      if (this.session) {
        fetch(this.session, { method: "DELETE", headers: headers(), keepalive: true }).catch(() => {});
        this.session = null;
      }
      if (this.abort) { this.abort.abort(); this.abort = null; }
      if (this.keepLive) { clearInterval(this.keepLive); this.keepLive = null; }
      this.video.removeAttribute("src");
      this.video.srcObject = null;
    }

    stop() {
      this.generation++;
      this.teardown();
    }
  }

  // Pages closed or left delete their sessions (the daemon also ends them on its own).
  const players = new Set();
  window.addEventListener("pagehide", () => { for (const player of players) player.stop(); });

  window.visiondLive = {
    mode,
    headers,
    play(video, base, name, onChange) {
      const player = new LivePlayer(video, base, name, onChange);
      players.add(player);
      player.start();
      return player;
    },
  };
})();
