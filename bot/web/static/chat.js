"use strict";
// The web chat: send text or a recording, read the reply as server-sent events, play it back.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
const log = $("log"), text = $("text"), sendButton = $("send"), recordButton = $("record");
const note = $("note");
let busy = false;

function bubble(role, content) {
  const li = document.createElement("li");
  li.className = role;
  li.textContent = content;
  log.append(li);
  li.scrollIntoView({block: "end"});
  return li;
}

function signedOut() {
  document.body.textContent = "Signed out. Run hearthbot web for a new sign-in link.";
}

async function history() {
  const response = await fetch("/api/chat/history");
  if (response.status === 401) return signedOut();
  const shown = await response.json();
  $("who").textContent = `${shown.persona} persona`;
  log.replaceChildren();
  for (const m of shown.messages) bubble(m.role, m.content).classList.toggle("heard", m.transcribed);
  recordButton.hidden = !(shown.voice && window.MediaRecorder && navigator.mediaDevices);
}

function show(event, reply, mine) {
  if (event.type === "text") {
    note.textContent = "";
    reply.classList.remove("pending");
    reply.append(event.text);
  } else if (event.type === "status") {
    note.textContent = event.text;
  } else if (event.type === "failed") {
    reply.classList.add("failed");
    reply.append((reply.textContent ? "\n" : "") + event.text);
  } else if (event.type === "heard") {
    mine.textContent = event.text;
    mine.classList.add("heard");
  } else if (event.type === "voice") {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = event.url;
    reply.append(audio);
    audio.play().catch(() => {});
  }
}

async function read(response, reply, mine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (line.startsWith("data: ")) show(JSON.parse(line.slice(6)), reply, mine);
      reply.scrollIntoView({block: "end"});
    }
  }
}

async function send(url, body, headers, shown) {
  busy = true;
  sendButton.disabled = true;
  const mine = bubble("user", shown);
  const reply = bubble("assistant", "");
  reply.classList.add("pending");
  try {
    const response = await fetch(url, {method: "POST", body,
                                       headers: {"X-CSRF-Token": csrf, ...headers}});
    if (response.status === 401) return signedOut();
    if (!response.ok) {
      reply.classList.add("failed");
      reply.textContent = (await response.json()).error;
      return;
    }
    await read(response, reply, mine);
    if (shown.trim() === "/new") log.replaceChildren(reply);
  } catch (error) {
    reply.classList.add("failed");
    reply.append("The connection to hearthbot was lost; the reply is in the history.");
  } finally {
    reply.classList.remove("pending");
    note.textContent = "";
    busy = false;
    sendButton.disabled = false;
    text.focus();
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const message = text.value.trim();
  if (!message || busy) return;
  text.value = "";
  send("/api/chat/messages", JSON.stringify({text: message}),
       {"Content-Type": "application/json"}, message);
});

text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

let recorder = null;
recordButton.addEventListener("click", async () => {
  if (recorder) return recorder.stop();
  if (busy) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: true});
  } catch (error) {
    note.textContent = "The microphone is not available to this page.";
    return;
  }
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"]
    .find((t) => MediaRecorder.isTypeSupported(t));
  const chunks = [];
  const started = performance.now();
  recorder = new MediaRecorder(stream, type ? {mimeType: type} : undefined);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", () => {
    stream.getTracks().forEach((track) => track.stop());
    const mime = (recorder.mimeType || "audio/webm").split(";")[0];
    const seconds = (performance.now() - started) / 1000;
    recorder = null;
    recordButton.classList.remove("on");
    recordButton.textContent = "Record";
    send("/api/chat/voice", new Blob(chunks, {type: mime}),
         {"Content-Type": mime, "X-Duration": seconds.toFixed(1)}, "voice note");
  });
  recorder.start();
  recordButton.classList.add("on");
  const tick = () => {
    recordButton.textContent = `Stop (${Math.floor((performance.now() - started) / 1000)} s)`;
  };
  tick();
  const clock = setInterval(() => (recorder ? tick() : clearInterval(clock)), 250);
});

$("logout").addEventListener("click", async () => {
  await fetch("/logout", {method: "POST", headers: {"X-CSRF-Token": csrf}});
  signedOut();
});

history();
