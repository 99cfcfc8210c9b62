// Parley's browser client: one WebSocket to /v1/realtime speaking the OpenAI Realtime API
// (GA event names), the microphone streamed up, the reply played back, both sides' words and
// each turn's latency shown live.
//
// Barge-in: when the server says the caller started talking (input_audio_buffer.speech_started)
// while the assistant is audible, the page drops its playback buffer at once, ignores any audio
// of that response still in flight, and tells the server exactly how much of the item was heard
// (conversation.item.truncate), so the assistant's memory holds only the words the caller heard.
// Before that decision, the moment the caller's voice starts over the reply, Parley pauses it
// (parley.output_audio.paused, which this page asks for in its session.update): playback stops
// with the buffer kept, and goes on at parley.output_audio.resumed if it was only "uh-huh".
//
// window.parleyStats exposes counters and transcripts for tests and for the curious (console).

import { Microphone, Player, WIRE_RATE, createAudioContext } from './audio.js';

const $ = (id) => document.getElementById(id);
const ui = {
  start: $('start'),
  reconnect: $('reconnect'),
  state: $('state'),
  level: $('level'),
  speaking: $('speaking'),
  instructions: $('instructions'),
  errors: $('errors'),
  transcript: $('transcript'),
  metrics: $('metrics').querySelector('tbody'),
};

const METRICS = [
  'end_of_turn_ms',
  'asr_final_ms',
  'first_token_ms',
  'first_chunk_ms',
  'first_audio_ms',
  'barge_in_stop_ms',
  'barge_in_decision_ms',
];

const stats = {
  connected: false,
  state: 'idle',
  turns: 0, // responses finished (any status)
  audioSamplesSent: 0, // 24 kHz samples of microphone audio sent
  audioSamplesReceived: 0, // 24 kHz samples of reply audio received
  audioSamplesPlayed: 0, // 24 kHz samples of reply audio actually played out
  flushes: 0, // local playback flushes that dropped queued audio (barge-in)
  truncatesSent: 0,
  pauses: 0, // parley.output_audio.paused received
  resumes: 0,
  userTranscripts: [], // final caller transcripts, in order
  assistantTranscripts: [], // final assistant transcripts, in order
  lastMetrics: null, // response.parley.metrics of the latest response.done
  errors: [], // messages shown to the user
};
window.parleyStats = stats;

/** One live session: socket + audio. Created by start(), torn down by stop(). */
let session = null;

// -- session lifecycle ---------------------------------------------------------------------

async function start() {
  clearErrors();
  setState('connecting');
  const s = {
    ws: null,
    ctx: null,
    mic: null,
    player: null,
    closing: false,
    responseId: null, // the response being generated, if any
    dropped: new Set(), // responses whose remaining audio is discarded (barged in)
    transcribed: new Set(), // responses whose final transcript was recorded
    audioItems: new Map(), // response id -> the item its audio belongs to
  };
  session = s;
  try {
    // The microphone before the AudioContext: Firefox (140 ESR) gave silence from a
    // microphone that joined a context already running, and the right order costs nothing.
    // After each wait, Stop may have been pressed (or Start again): then this attempt only
    // frees what it opened meanwhile, which the stop could not see yet.
    s.mic = new Microphone((pcm, peak) => sendAudio(s, pcm, peak));
    await s.mic.open();
    if (session !== s) return release(s); // stopped while the permission prompt was up
    s.ctx = await createAudioContext();
    if (session !== s) return release(s);
    s.player = new Player(s.ctx, (played) => {
      stats.audioSamplesPlayed = played;
      showSpeaking();
    });
    s.ws = await openSocket(s);
    if (session !== s) return release(s);
    sendSessionUpdate(s.ws);
    // Frames only once the socket is open: the first words must not be lost.
    s.mic.start(s.ctx);
    setState('listening');
  } catch (err) {
    if (session !== s) return release(s); // stopped meanwhile: the error is moot
    showError(describe(err));
    drop(s);
  }
}

function stop() {
  if (!session) return;
  teardown(session);
  session = null;
  setState('idle');
}

/** The session ended on its own (an error, the server went away): offer to reconnect. */
function drop(s) {
  teardown(s);
  session = null;
  setState('disconnected');
}

function teardown(s) {
  release(s);
  stats.connected = false;
  ui.level.value = 0;
}

/** Free what a session holds (microphone, playback, socket, AudioContext); safe to repeat. */
function release(s) {
  s.closing = true;
  s.mic?.stop();
  s.player?.close();
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000, 'client stopped');
  s.ctx?.close().catch(() => {}); // closing it twice rejects: nothing to do
}

function openSocket(s) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // A server with an API key is opened as /#key=<key> (a fragment never leaves the browser);
  // the key goes as a subprotocol, as OpenAI's browser clients send theirs.
  const key = new URLSearchParams(location.hash.slice(1)).get('key');
  const protocols = key ? ['realtime', `openai-insecure-api-key.${key}`] : ['realtime'];
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime`, protocols);
  let opened = false;
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      opened = true;
      if (session === s) stats.connected = true; // else a stopped attempt's late socket
      resolve(ws);
    };
    ws.onerror = () => {}; // the close event that always follows carries what we can know
    ws.onclose = (e) => {
      if (session === s) stats.connected = false;
      if (!opened) {
        const hint = key ? '' : ' If the server has an API key, open this page as /#key=<key>.';
        reject(new Error(`Could not connect to the server (WebSocket closed, code ${e.code}).${hint}`));
        return;
      }
      if (s.closing || session !== s) return;
      // Lost after it was up: keep the transcript, offer to reconnect (a new session).
      showError(`Connection lost (code ${e.code}${e.reason ? `: ${e.reason}` : ''}).`);
      drop(s);
    };
    ws.onmessage = (e) => {
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        showError('The server sent a frame that is not JSON.');
        return;
      }
      onServerEvent(s, event);
    };
  });
}

function sendSessionUpdate(ws) {
  const pcm = { type: 'audio/pcm', rate: WIRE_RATE };
  const update = {
    type: 'realtime',
    output_modalities: ['audio'],
    audio: {
      input: {
        format: pcm,
        turn_detection: { type: 'server_vad' },
        // Transcription on: the caller's words come back (Parley's own ASR; the model name
        // is echoed only).
        transcription: { model: 'whisper-tiny.en', language: 'en' },
      },
      output: { format: pcm },
    },
    parley: { pause_playback: true }, // Parley's extension: see parley.output_audio.paused
  };
  const instructions = ui.instructions.value.trim();
  if (instructions) update.instructions = instructions; // else the server's default
  send(ws, { type: 'session.update', session: update });
}

function sendAudio(s, pcm, peak) {
  ui.level.value = peak;
  if (s.ws.readyState !== WebSocket.OPEN) return;
  // Int16Array bytes are little-endian on every platform browsers run on.
  send(s.ws, { type: 'input_audio_buffer.append', audio: toBase64(new Uint8Array(pcm.buffer)) });
  stats.audioSamplesSent += pcm.length;
}

function send(ws, event) {
  ws.send(JSON.stringify(event));
}

// -- server events --------------------------------------------------------------------------

function onServerEvent(s, event) {
  if (session !== s) return; // a late frame of a session already stopped
  switch (event.type) {
    case 'session.created':
    case 'session.updated':
      break;
    case 'input_audio_buffer.speech_started':
      userBubble(event.item_id);
      ui.speaking.dataset.user = 'true';
      showSpeaking();
      // The barge-in flush: the caller talks over the assistant, so it stops at once.
      if (s.player.busy || s.responseId) bargeIn(s);
      break;
    case 'input_audio_buffer.speech_stopped':
      ui.speaking.dataset.user = 'false';
      showSpeaking();
      break;
    case 'conversation.item.input_audio_transcription.delta': {
      const b = userBubble(event.item_id);
      b.partial += event.delta;
      b.text.textContent = b.partial;
      break;
    }
    case 'conversation.item.input_audio_transcription.completed': {
      const b = userBubble(event.item_id);
      b.text.textContent = event.transcript;
      b.el.dataset.final = 'true';
      b.el.classList.remove('partial');
      stats.userTranscripts.push(event.transcript);
      break;
    }
    case 'response.created':
      s.responseId = event.response.id;
      break;
    case 'response.output_audio.delta':
      onAudioDelta(s, event);
      break;
    case 'response.output_audio.done':
      if (!s.dropped.has(event.response_id)) s.player.endItem();
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      assistantBubble(event.item_id).text.textContent += event.delta;
      break;
    case 'response.output_audio_transcript.done':
    case 'response.output_text.done': {
      const b = assistantBubble(event.item_id);
      b.text.textContent = event.transcript ?? event.text;
      stats.assistantTranscripts.push(b.text.textContent);
      s.transcribed.add(event.response_id);
      break;
    }
    case 'parley.output_audio.paused':
      // The caller started talking over the reply: silence it now, keeping its audio, until
      // the server knows whether that was an interruption (speech_started) or not (resumed).
      stats.pauses += 1;
      s.player.pause();
      break;
    case 'parley.output_audio.resumed':
      stats.resumes += 1;
      s.player.resume();
      break;
    case 'conversation.item.truncated':
      assistantBubble(event.item_id).el.classList.add('interrupted');
      break;
    case 'response.done':
      onResponseDone(s, event.response);
      break;
    case 'error':
      showError(event.error?.message ?? 'unknown server error', event.error?.code);
      break;
    default:
      break; // item/part bookkeeping events: nothing to show
  }
}

function onAudioDelta(s, event) {
  const pcm = fromBase64(event.delta);
  stats.audioSamplesReceived += pcm.length >> 1;
  s.audioItems.set(event.response_id, event.item_id);
  if (s.dropped.has(event.response_id)) return; // in flight when the caller barged in
  s.player.push(event.item_id, pcm);
  showSpeaking();
}

function onResponseDone(s, response) {
  if (s.responseId === response.id) s.responseId = null;
  s.player.resume(); // a response that ends while paused (failed, cancelled) leaves none
  if (response.status === 'cancelled') {
    // Cancelled server-side (e.g. the caller barged in): whatever is still queued goes.
    if (s.player.busy && !s.dropped.has(response.id)) bargeIn(s, response.id);
  } else if (!s.dropped.has(response.id)) {
    s.player.endItem();
  }
  for (const item of response.output ?? []) {
    if (item.role !== 'assistant') continue;
    const b = assistantBubble(item.id);
    if (response.status === 'cancelled') b.el.classList.add('interrupted');
    // A cancelled response may end without a transcript "done": keep what was shown.
    if (!s.transcribed.has(response.id)) stats.assistantTranscripts.push(b.text.textContent);
  }
  s.transcribed.delete(response.id);
  s.audioItems.delete(response.id);
  stats.turns += 1;
  stats.lastMetrics = response.parley?.metrics ?? null;
  addMetricsRow(stats.turns, response.status, stats.lastMetrics);
}

/**
 * Stop the assistant now: drop the playback buffer, ignore the rest of the response's audio,
 * and tell the server how much of the interrupted item the caller actually heard.
 */
async function bargeIn(s, responseId = s.responseId) {
  const generating = responseId ? s.audioItems.get(responseId) : undefined;
  if (responseId) s.dropped.add(responseId);
  const flushed = await s.player.flush();
  showSpeaking();
  let itemId = null;
  let playedMs = 0;
  if (flushed.dropped > 0) {
    // Cut off mid-playback (the response may have finished generating long ago).
    stats.flushes += 1;
    ({ itemId, playedMs } = flushed);
  } else if (generating) {
    // Still generating but playback had run dry: all that was played was heard.
    itemId = generating;
    playedMs = flushed.itemId === generating ? flushed.playedMs : 0;
  }
  if (!itemId) return; // no reply audio was interrupted
  assistantBubble(itemId).el.classList.add('interrupted');
  if (s.ws.readyState !== WebSocket.OPEN) return;
  send(s.ws, {
    type: 'conversation.item.truncate',
    item_id: itemId,
    content_index: 0,
    audio_end_ms: Math.floor(playedMs),
  });
  stats.truncatesSent += 1;
}

// -- view -----------------------------------------------------------------------------------

const bubbles = new Map(); // item id -> { el, text, partial }

function bubble(itemId, role) {
  let b = bubbles.get(itemId);
  if (!b) {
    const el = document.createElement('li');
    el.className = `turn ${role}`;
    el.dataset.itemId = itemId;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = role === 'user' ? 'You' : 'Parley';
    const text = document.createElement('span');
    text.className = 'text';
    el.append(who, text);
    ui.transcript.append(el);
    b = { el, text, partial: '' };
    bubbles.set(itemId, b);
  }
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return b;
}

function userBubble(itemId) {
  const b = bubble(itemId, 'user');
  if (!b.el.dataset.final) b.el.classList.add('partial');
  return b;
}

function assistantBubble(itemId) {
  return bubble(itemId, 'assistant');
}

function addMetricsRow(n, status, metrics) {
  const row = document.createElement('tr');
  const cells = [String(n), status, ...METRICS.map((k) => formatMs(metrics?.[k]))];
  for (const value of cells) {
    const td = document.createElement('td');
    td.textContent = value;
    row.append(td);
  }
  ui.metrics.append(row);
}

function formatMs(value) {
  return typeof value === 'number' ? String(Math.round(value)) : '–';
}

function setState(state) {
  stats.state = state;
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  const live = state === 'connecting' || state === 'listening';
  ui.start.textContent = live ? 'Stop' : 'Start';
  ui.reconnect.hidden = state !== 'disconnected';
  if (!live) {
    ui.speaking.dataset.user = 'false';
    showSpeaking();
  }
}

function showSpeaking() {
  const assistant = session?.player?.busy ?? false;
  const user = ui.speaking.dataset.user === 'true';
  ui.speaking.textContent = user ? 'you are speaking' : assistant ? 'Parley is speaking' : '';
}

function showError(message, code) {
  const text = code ? `${message} (${code})` : message;
  stats.errors.push(text);
  const li = document.createElement('li');
  li.textContent = text;
  ui.errors.append(li);
}

function clearErrors() {
  ui.errors.replaceChildren();
}

function describe(err) {
  if (err?.name === 'NotAllowedError') return 'Microphone access was refused: allow it and retry.';
  if (err?.name === 'NotFoundError') return 'No microphone was found.';
  if (!window.isSecureContext) {
    return `${err?.message ?? err} (microphone access needs https or http://localhost)`;
  }
  return String(err?.message ?? err);
}

// -- base64 ---------------------------------------------------------------------------------

function toBase64(bytes) {
  if (bytes.toBase64) return bytes.toBase64(); // Chromium 140+, Firefox 133+
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(b64) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

// -- wiring ---------------------------------------------------------------------------------

ui.start.addEventListener('click', () => (session ? stop() : start()));
ui.reconnect.addEventListener('click', () => start());
setState('idle');
