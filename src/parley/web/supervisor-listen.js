// A supervisor listening in on one session over WebRTC: one audio track comes back (the
// caller and the agent mixed); the supervisor's microphone goes out, and the server
// forwards it to the caller only while this supervisor has taken the conversation over.

import { sendListenOffer } from "/api.js";
import { iceGatheringDone } from "/connection.js";

export class ListenConnection extends EventTarget {
  // Events: "track" (detail: the remote MediaStream), "state" (detail: a word), "dropped".
  constructor(sessionId, { iceServers = [] } = {}) {
    super();
    this.sessionId = sessionId;
    this.iceServers = iceServers;
    this.pc = null;
    this.closed = false;
  }

  async open(token, micStream) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const micTrack = micStream && micStream.getAudioTracks()[0];
    if (micTrack) pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [micStream] });
    else pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (e) => {
      this.dispatchEvent(new CustomEvent("track", { detail: e.streams[0] || new MediaStream([e.track]) }));
    });
    pc.addEventListener("connectionstatechange", () => {
      const state = pc.connectionState;
      this.dispatchEvent(new CustomEvent("state", { detail: state }));
      if (!this.closed && ["failed", "closed"].includes(state)) {
        this.closed = true;
        this.dispatchEvent(new Event("dropped"));
      }
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    if (this.closed) return;
    const answer = await sendListenOffer(this.sessionId, token, pc.localDescription.sdp);
    if (this.closed) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  close() {
    this.closed = true;
    if (this.pc) this.pc.close();
  }
}

// The level of what the supervisor hears (RMS, full scale 1), sampled every 50 ms.
export class LevelMeter {
  constructor(onLevel) {
    this.onLevel = onLevel;
    this.context = null;
    this.timer = null;
  }

  watch(stream) {
    this.stop();
    this.context = this.context || new AudioContext();
    if (this.context.state === "suspended") this.context.resume().catch(() => {});
    // Chrome feeds a remote track to WebAudio only while it also plays in a media element.
    const source = this.context.createMediaStreamSource(stream);
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const v of samples) sum += v * v;
      this.onLevel(Math.sqrt(sum / samples.length));
    }, 50);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
