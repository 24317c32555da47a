// One WebRTC connection to a Parley session: the microphone goes out, the agent's voice
// comes back, and the "parley" data channel carries JSON events and control messages.

import { sendOffer } from "./api.js";

const GATHER_TIMEOUT_MS = 3000;
const DISCONNECTED_DROP_MS = 4000;

export function iceGatheringDone(pc) {
  // The server does not take trickled candidates: offer once gathering is complete.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

export class VoiceConnection extends EventTarget {
  constructor({ iceServers = [] } = {}) {
    super();
    this.iceServers = iceServers;
    this.pc = null;
    this.channel = null;
    this.closedByUs = false;
    this.dropped = false;
    this.disconnectTimer = null;
  }

  async open(offerUrl, token, micStream) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    for (const track of micStream.getAudioTracks()) pc.addTrack(track, micStream);
    const channel = pc.createDataChannel("parley");
    this.channel = channel;
    channel.addEventListener("message", (e) => {
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        return;
      }
      this.dispatchEvent(new CustomEvent("server-event", { detail: message }));
    });
    channel.addEventListener("open", () => this.dispatchEvent(new Event("open")));
    channel.addEventListener("close", () => this.#drop("data channel closed"));
    pc.addEventListener("connectionstatechange", () => {
      clearTimeout(this.disconnectTimer);
      if (["failed", "closed"].includes(pc.connectionState)) this.#drop(`connection ${pc.connectionState}`);
      // A server that died sends no goodbye: ICE says "disconnected" within seconds but
      // "failed" only after ~30 s of silence. A disconnection that lasts is a drop, so the
      // caller is back on a live server (the session resumes) instead of waiting.
      if (pc.connectionState === "disconnected") {
        this.disconnectTimer = setTimeout(() => this.#drop("connection lost"), DISCONNECTED_DROP_MS);
      }
    });
    pc.addEventListener("track", (e) => {
      this.dispatchEvent(new CustomEvent("agent-track", { detail: e.streams[0] || new MediaStream([e.track]) }));
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const answer = await sendOffer(offerUrl, token, pc.localDescription.sdp);
    if (this.closedByUs) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  send(message) {
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  close() {
    this.closedByUs = true;
    clearTimeout(this.disconnectTimer);
    if (this.channel) this.channel.close();
    if (this.pc) this.pc.close();
  }

  #drop(reason) {
    if (this.closedByUs || this.dropped) return;
    this.dropped = true;
    if (this.pc) this.pc.close();
    this.dispatchEvent(new CustomEvent("dropped", { detail: reason }));
  }
}
