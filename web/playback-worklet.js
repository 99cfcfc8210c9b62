// Reply playback on the audio thread: a FIFO of chunks already at the AudioContext's rate,
// played back to back, with silence while it is empty. It can be dropped at once ("flush"),
// which is how barge-in stops the assistant mid-word: the page does not wait for the server.
//
// Messages from the page:
//   { type: 'push', itemId, samples: Float32Array }   queue audio of conversation item itemId
//   { type: 'flush' }                                 drop everything queued, now (and play on)
//   { type: 'pause' } / { type: 'resume' }           stop playing, keeping the queue / go on
// Messages to the page:
//   { type: 'progress', consumed, played, itemId, itemPlayed }   about every 50 ms while playing
//   { type: 'flushed', consumed, played, itemId, itemPlayed, dropped }
//   { type: 'drained', consumed, played, itemId, itemPlayed }    the queue ran empty
// Counts are frames at the context's rate: `consumed` = played + dropped since the start (the
// page compares it with what it pushed to know whether anything is still queued), `itemPlayed`
// = frames of `itemId` (the item at the head of the queue, or the last one played) heard so far.

const REPORT_EVERY = 0.05; // seconds

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // [{ itemId, samples }], head first
    this.offset = 0; // frames of queue[0] already played
    this.played = 0;
    this.consumed = 0;
    this.itemId = null;
    this.itemPlayed = 0;
    this.sinceReport = 0;
    this.paused = false;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'push') {
      this.queue.push({ itemId: msg.itemId, samples: msg.samples });
    } else if (msg.type === 'pause' || msg.type === 'resume') {
      this.paused = msg.type === 'pause';
    } else if (msg.type === 'flush') {
      this.paused = false; // the next reply plays
      const head = this.queue[0];
      if (head && head.itemId !== this.itemId) {
        // Flushed before a new item's first frame: the caller heard none of it.
        this.itemId = head.itemId;
        this.itemPlayed = 0;
      }
      let dropped = 0;
      for (const chunk of this.queue) dropped += chunk.samples.length;
      dropped -= this.offset;
      this.queue = [];
      this.offset = 0;
      this.consumed += dropped;
      this.report('flushed', { dropped });
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (!this.paused && written < out.length && this.queue.length > 0) {
      const head = this.queue[0];
      if (head.itemId !== this.itemId) {
        this.itemId = head.itemId;
        this.itemPlayed = 0;
      }
      const n = Math.min(out.length - written, head.samples.length - this.offset);
      out.set(head.samples.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      this.itemPlayed += n;
      if (this.offset === head.samples.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written); // underrun or idle: silence (the output buffer is not guaranteed zero)
    // Mono source, stereo-or-more destination: copy to the other channels.
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (written > 0) {
      this.played += written;
      this.consumed += written;
      this.sinceReport += written;
      if (this.queue.length === 0) {
        this.report('drained');
      } else if (this.sinceReport >= REPORT_EVERY * sampleRate) {
        this.report('progress');
      }
    }
    return true;
  }

  report(type, extra = {}) {
    this.sinceReport = 0;
    this.port.postMessage({
      type,
      consumed: this.consumed,
      played: this.played,
      itemId: this.itemId,
      itemPlayed: this.itemPlayed,
      ...extra,
    });
  }
}

registerProcessor('parley-playback', PlaybackProcessor);
