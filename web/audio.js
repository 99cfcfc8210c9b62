// The page's two audio paths, each an AudioWorklet on one shared AudioContext:
//   Microphone: getUserMedia (echo cancellation, noise suppression) -> capture worklet ->
//               20 ms PCM16 frames at 24 kHz handed to a callback.
//   Player:     24 kHz PCM16 reply audio -> resampled to the context rate -> playback worklet
//               FIFO, which can be flushed instantly (barge-in) and reports what was heard.

import { Resampler, pcm16ToFloat } from './resampler.js';

export const WIRE_RATE = 24000; // the Realtime API's audio/pcm rate, both directions

/**
 * Create the AudioContext and load both worklets. Call after a click (autoplay rules: the
 * click's sticky activation, and a granted microphone, let it run).
 */
export async function createAudioContext() {
  const ctx = new AudioContext({ latencyHint: 'interactive' });
  await Promise.all([
    ctx.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url)),
    ctx.audioWorklet.addModule(new URL('./playback-worklet.js', import.meta.url)),
  ]);
  if (ctx.state === 'suspended') await ctx.resume();
  return ctx;
}

export class Microphone {
  /** @param {(pcm: Int16Array, peak: number) => void} onFrame  called per 20 ms frame */
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.stream = null;
    this.source = null;
    this.node = null;
  }

  /** Ask for the microphone (the permission prompt). Rejects if access is refused. */
  async open() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        // The browser's echo canceller removes the assistant's own voice from the mic, so
        // the server's VAD does not take the reply for the caller barging in.
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
      },
    });
  }

  /**
   * Start delivering frames from the open microphone through `ctx`.
   * @param {AudioContext} ctx
   */
  start(ctx) {
    this.source = ctx.createMediaStreamSource(this.stream);
    // No outputs: a worklet node with a live input is processed without reaching the speakers.
    this.node = new AudioWorkletNode(ctx, 'parley-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit', // the node downmixes whatever the device gives to mono
    });
    this.node.port.onmessage = (e) => this.onFrame(e.data.pcm, e.data.peak);
    this.source.connect(this.node);
  }

  stop() {
    this.source?.disconnect();
    if (this.node) this.node.port.onmessage = null;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = this.source = this.node = null;
  }
}

export class Player {
  /**
   * @param {AudioContext} ctx
   * @param {(played24k: number) => void} onProgress  total 24 kHz samples heard so far
   */
  constructor(ctx, onProgress) {
    this.ctx = ctx;
    this.onProgress = onProgress;
    this.node = new AudioWorkletNode(ctx, 'parley-playback', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    this.node.connect(ctx.destination);
    this.node.port.onmessage = (e) => this._onMessage(e.data);
    this.resampler = new Resampler(WIRE_RATE, ctx.sampleRate);
    this.itemId = null; // the item the resampler is in the middle of
    this.pushed = 0; // frames (context rate) sent to the worklet
    this.consumed = 0; // frames the worklet played or dropped, as last reported
    this.pendingFlush = null; // resolve() of the flush awaiting the worklet's answer
  }

  /** Whether reply audio is queued or playing (as far as the last report says). */
  get busy() {
    return this.pushed > this.consumed;
  }

  /**
   * Queue a chunk of reply audio.
   * @param {string} itemId  the conversation item the audio belongs to
   * @param {Uint8Array} pcm16  24 kHz PCM16 little-endian
   */
  push(itemId, pcm16) {
    if (itemId !== this.itemId) this.endItem();
    this.itemId = itemId;
    this._post(itemId, this.resampler.push(pcm16ToFloat(pcm16)));
  }

  /** The item's audio is complete: play out the resampler's look-ahead too. */
  endItem() {
    if (this.itemId !== null) this._post(this.itemId, this.resampler.flush());
    this.itemId = null;
  }

  /**
   * Drop everything queued, now. Resolves to what was heard of the interrupted item:
   * { itemId, playedMs, dropped } (dropped: frames thrown away; 0 if nothing was queued).
   */
  flush() {
    this.resampler.reset();
    this.itemId = null;
    return new Promise((resolve) => {
      this.pendingFlush = resolve;
      this.node.port.postMessage({ type: 'flush' });
    });
  }

  /** Stop playing, keeping what is queued (the caller may only be saying "uh-huh"). */
  pause() {
    this.node.port.postMessage({ type: 'pause' });
  }

  /** Play on from where pause() stopped. */
  resume() {
    this.node.port.postMessage({ type: 'resume' });
  }

  close() {
    this.node.port.onmessage = null;
    this.node.disconnect();
    this.pendingFlush?.({ itemId: null, playedMs: 0, dropped: 0 });
  }

  _post(itemId, samples) {
    if (samples.length === 0) return;
    const copy = samples.slice(); // the resampler reuses its output storage
    this.pushed += copy.length;
    this.node.port.postMessage({ type: 'push', itemId, samples: copy }, [copy.buffer]);
  }

  _onMessage(msg) {
    this.consumed = msg.consumed;
    this.onProgress(Math.round((msg.played * WIRE_RATE) / this.ctx.sampleRate));
    if (msg.type === 'flushed' && this.pendingFlush) {
      const resolve = this.pendingFlush;
      this.pendingFlush = null;
      const playedMs = (1000 * msg.itemPlayed) / this.ctx.sampleRate;
      resolve({ itemId: msg.itemId, playedMs, dropped: msg.dropped });
    }
  }
}
