// Demo GP page for the hub's alert gateway: plain JavaScript, no build step, no third party.
// It does what a GP software vendor would: a CDS Hooks patient-view call when a patient is opened, and
// an EventSource on /alerts/stream for live alerts; read/dismiss go to POST /alerts/<id>/read|dismiss.
// Every alert text is set with textContent (never innerHTML) and only http(s) links are made clickable.
"use strict";

(() => {
  const SERVICE = "/cds-services/hub-network-alerts";
  const SESSION_KEY = "hub-gp-demo-session";
  const INDICATORS = { info: "Information", warning: "Warning", critical: "Critical" };

  const session = { rpps: null, token: null, source: null, patient: null };
  const popup = { current: null, queue: [], returnFocus: null };

  const $ = (id) => document.getElementById(id);
  const show = (element, visible) => { element.hidden = !visible; };

  // --- HTTP -------------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.message) || `HTTP ${response.status}`);
      error.status = response.status;
      error.code = data && data.error;
      throw error;
    }
    return data;
  }

  function newHookInstance() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const bytes = window.crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- alerts, whether from a CDS Hooks card or an SSE alert view ----------------------------------

  function fromCard(card) {
    const extension = card.extension || {};
    return {
      alertId: extension["hub-alert-id"] || card.uuid,
      state: extension["hub-alert-state"] || "new",
      network: extension["hub-network"] || {},
      card,
      patient: null,
    };
  }

  function fromView(view) {
    const alert = view.alert || {};
    return { alertId: view.alert_id, state: view.state, network: alert.network || {}, card: alert.card || {}, patient: alert.patient || {} };
  }

  function concernsPatient(item, patientId) {
    if (!item.patient) return true; // cards come from a patient-view call for this very patient
    if (item.patient.patient_id === patientId) return true;
    return (item.patient.identifiers || []).some((identifier) => identifier && identifier.value === patientId);
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, window.location.href);
      return ["http:", "https:", "mailto:", "tel:"].includes(parsed.protocol) ? parsed.href : null;
    } catch (_) {
      return null;
    }
  }

  function linkOrText(label, url) {
    const href = url ? safeUrl(url) : null;
    if (!href) {
      const span = document.createElement("span");
      span.textContent = label;
      return span;
    }
    const anchor = document.createElement("a");
    anchor.href = href;
    anchor.textContent = label;
    if (href.startsWith("http")) {
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
    }
    return anchor;
  }

  // CDS Hooks card details are Markdown; the hub writes paragraphs, "- " lists, **bold** and backslash
  // escapes. This renders exactly that subset as DOM nodes (anything else stays literal text).
  function inline(text) {
    const nodes = [];
    let plain = "";
    let bold = null;
    for (let i = 0; i < text.length; i += 1) {
      const char = text[i];
      if (char === "\\" && i + 1 < text.length) {
        i += 1;
        if (bold === null) plain += text[i]; else bold += text[i];
      } else if (char === "*" && text[i + 1] === "*") {
        i += 1;
        if (bold === null) {
          if (plain) nodes.push(document.createTextNode(plain));
          plain = "";
          bold = "";
        } else {
          const strong = document.createElement("strong");
          strong.textContent = bold;
          nodes.push(strong);
          bold = null;
        }
      } else if (bold === null) {
        plain += char;
      } else {
        bold += char;
      }
    }
    if (bold !== null) plain += `**${bold}`;
    if (plain) nodes.push(document.createTextNode(plain));
    return nodes;
  }

  function markdown(text) {
    const blocks = [];
    let list = null;
    for (const line of (text || "").split("\n")) {
      if (line.startsWith("- ")) {
        if (!list) {
          list = document.createElement("ul");
          blocks.push(list);
        }
        const li = document.createElement("li");
        li.append(...inline(line.slice(2)));
        list.appendChild(li);
        continue;
      }
      list = null;
      if (line.trim()) {
        const p = document.createElement("p");
        p.append(...inline(line));
        blocks.push(p);
      }
    }
    return blocks;
  }

  // --- the pop-up ---------------------------------------------------------------------------------

  function enqueue(item) {
    if (item.state !== "new") return;
    if (popup.current && popup.current.alertId === item.alertId) return;
    if (popup.queue.some((queued) => queued.alertId === item.alertId)) return;
    popup.queue.push(item);
    if (!popup.current) showNext();
    else renderQueueNote();
  }

  function forget(alertId) {
    popup.queue = popup.queue.filter((queued) => queued.alertId !== alertId);
    if (popup.current && popup.current.alertId === alertId) hidePopup();
    else renderQueueNote();
  }

  function renderQueueNote() {
    const more = popup.queue.length;
    $("alert-queue").textContent = more === 1 ? "1 more alert for this patient" : `${more} more alerts for this patient`;
    show($("alert-queue"), more > 0);
  }

  function showNext() {
    const item = popup.queue.shift();
    if (!item) return;
    popup.current = item;
    const card = item.card || {};
    const indicator = INDICATORS[card.indicator] ? card.indicator : "info";
    const element = $("alert-popup");
    element.dataset.alertId = item.alertId;
    element.dataset.indicator = indicator;
    $("alert-indicator").textContent = INDICATORS[indicator];
    $("alert-network").textContent = item.network.name || "";
    $("alert-summary").textContent = card.summary || "";
    $("alert-detail").replaceChildren(...markdown(card.detail));
    const source = $("alert-source");
    source.replaceChildren(linkOrText((card.source && card.source.label) || "", card.source && card.source.url));
    const links = $("alert-links");
    links.replaceChildren(
      ...(card.links || []).map((link) => {
        const li = document.createElement("li");
        li.appendChild(linkOrText(link.label || link.url, link.url));
        return li;
      }),
    );
    show(links, links.children.length > 0);
    show($("alert-error"), false);
    renderQueueNote();
    const wasHidden = element.hidden;
    show(element, true);
    if (wasHidden) {
      popup.returnFocus = document.activeElement;
      element.focus();
    }
  }

  function hidePopup() {
    popup.current = null;
    if (popup.queue.length) {
      showNext();
      return;
    }
    const element = $("alert-popup");
    show(element, false);
    element.dataset.alertId = "";
    if (popup.returnFocus && document.contains(popup.returnFocus)) popup.returnFocus.focus();
    popup.returnFocus = null;
  }

  async function act(alertId, action) {
    const view = await api("POST", `/alerts/${encodeURIComponent(alertId)}/${action}`);
    forget(alertId);
    if (session.patient) await loadPatientAlerts(false);
    await refreshPatients();
    return view;
  }

  async function popupAction(action) {
    if (!popup.current) return;
    try {
      await act(popup.current.alertId, action);
    } catch (error) {
      $("alert-error").textContent = `Could not save: ${error.message}`;
      show($("alert-error"), true);
    }
  }

  // --- patients -----------------------------------------------------------------------------------

  async function refreshPatients() {
    const data = await api("GET", "/alerts/patients");
    const list = $("patient-list");
    list.replaceChildren(
      ...data.patients.map((patient) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "patient-link";
        // The GP knows the patient by their own software's id: show and open by it when there is one.
        const local = (patient.identifiers || []).find((identifier) => identifier && identifier.value);
        const openAs = local ? local.value : patient.patient_id;
        button.dataset.patientId = openAs;
        const name = document.createElement("span");
        name.textContent = openAs;
        button.appendChild(name);
        if (patient.unread > 0) {
          const badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = `${patient.unread} new`;
          button.appendChild(badge);
        }
        button.addEventListener("click", () => openPatient(openAs));
        li.appendChild(button);
        return li;
      }),
    );
    show($("patient-list-empty"), data.patients.length === 0);
    return data;
  }

  function renderPatientAlerts(items) {
    const list = $("patient-alerts");
    list.replaceChildren(
      ...items.map((item) => {
        const li = document.createElement("li");
        li.className = "alert-item";
        li.dataset.alertId = item.alertId;
        li.dataset.state = item.state;
        const title = document.createElement("p");
        title.className = "alert-item-title";
        title.textContent = item.card.summary || "";
        const meta = document.createElement("p");
        meta.className = "muted";
        meta.textContent = `${item.network.name || "Care network"} · ${item.state === "new" ? "new" : "read"}`;
        const actions = document.createElement("div");
        actions.className = "row";
        if (item.state === "new") {
          const read = document.createElement("button");
          read.type = "button";
          read.className = "quiet item-read";
          read.textContent = "Mark as read";
          read.addEventListener("click", () => act(item.alertId, "read").catch(showPatientError));
          actions.appendChild(read);
        }
        const dismiss = document.createElement("button");
        dismiss.type = "button";
        dismiss.className = "quiet item-dismiss";
        dismiss.textContent = "Dismiss";
        dismiss.addEventListener("click", () => act(item.alertId, "dismiss").catch(showPatientError));
        actions.appendChild(dismiss);
        li.append(title, meta, actions);
        return li;
      }),
    );
    show($("patient-alerts-empty"), items.length === 0);
  }

  function showPatientError(error) {
    $("patient-error").textContent = error.message;
    show($("patient-error"), true);
  }

  // The CDS Hooks patient-view call, exactly as GP software would make it.
  async function loadPatientAlerts(popUp) {
    const patientId = session.patient;
    const response = await api("POST", SERVICE, {
      hook: "patient-view",
      hookInstance: newHookInstance(),
      context: { userId: `Practitioner/${session.rpps}`, patientId },
    });
    if (session.patient !== patientId) return;
    const items = (response.cards || []).map(fromCard);
    renderPatientAlerts(items);
    if (popUp) items.forEach(enqueue);
  }

  async function openPatient(patientId) {
    const id = (patientId || "").trim();
    if (!id) return;
    session.patient = id;
    popup.queue = [];
    if (popup.current) hidePopup();
    $("patient-id").value = id;
    $("patient-current").textContent = id;
    show($("patient-error"), false);
    show($("patient-view"), true);
    try {
      await loadPatientAlerts(true);
    } catch (error) {
      showPatientError(error);
    }
  }

  // --- the push stream ----------------------------------------------------------------------------

  function setStreamStatus(state, text) {
    const status = $("stream-status");
    status.dataset.state = state;
    status.textContent = text;
  }

  function connectStream() {
    if (session.source) session.source.close();
    // EventSource cannot send headers: the token goes in the query string (docs/GP_INTEGRATION.md).
    const source = new EventSource(`/alerts/stream?token=${encodeURIComponent(session.token)}`);
    session.source = source;
    setStreamStatus("connecting", "Connecting…");
    source.onopen = () => setStreamStatus("live", "Live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) setStreamStatus("offline", "Disconnected");
      else setStreamStatus("connecting", "Reconnecting…");
    };
    source.addEventListener("alert", (event) => {
      const item = fromView(JSON.parse(event.data));
      refreshPatients().catch(() => {});
      if (session.patient && concernsPatient(item, session.patient)) {
        enqueue(item);
        loadPatientAlerts(false).catch(showPatientError);
      }
    });
    source.addEventListener("state", (event) => {
      const item = fromView(JSON.parse(event.data));
      if (item.state !== "new") forget(item.alertId);
      refreshPatients().catch(() => {});
      if (session.patient && concernsPatient(item, session.patient)) loadPatientAlerts(false).catch(showPatientError);
    });
  }

  // --- log in and out -----------------------------------------------------------------------------

  async function logIn(rpps, token) {
    session.rpps = rpps;
    session.token = token;
    const data = await refreshPatients();
    if (data.practitioner !== rpps) {
      throw new Error("This token belongs to another practitioner.");
    }
    window.sessionStorage.setItem(SESSION_KEY, JSON.stringify({ rpps, token }));
    $("session-practitioner").textContent = rpps;
    show($("login"), false);
    show($("session"), true);
    show($("workspace"), true);
    connectStream();
    $("patient-id").focus();
  }

  function logOut() {
    window.sessionStorage.removeItem(SESSION_KEY);
    if (session.source) session.source.close();
    Object.assign(session, { rpps: null, token: null, source: null, patient: null });
    popup.queue = [];
    if (popup.current) hidePopup();
    show($("workspace"), false);
    show($("patient-view"), false);
    show($("session"), false);
    show($("login"), true);
    $("login-token").value = "";
    setStreamStatus("offline", "Offline");
    $("login-rpps").focus();
  }

  function wire() {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const rpps = $("login-rpps").value.trim();
      const token = $("login-token").value.trim();
      show($("login-error"), false);
      if (!rpps || !token) {
        $("login-error").textContent = "Enter your RPPS number and your gateway token.";
        show($("login-error"), true);
        return;
      }
      try {
        await logIn(rpps, token);
      } catch (error) {
        session.rpps = null;
        session.token = null;
        $("login-error").textContent = error.status === 401 ? "Unknown or revoked token." : error.message;
        show($("login-error"), true);
      }
    });
    $("logout").addEventListener("click", logOut);
    $("patient-form").addEventListener("submit", (event) => {
      event.preventDefault();
      openPatient($("patient-id").value);
    });
    $("alert-read").addEventListener("click", () => popupAction("read"));
    $("alert-dismiss").addEventListener("click", () => popupAction("dismiss"));
    $("alert-popup").addEventListener("keydown", (event) => {
      if (event.key === "Escape") hidePopup(); // "later": the alert stays new, listed under Care networks
    });

    const saved = window.sessionStorage.getItem(SESSION_KEY);
    if (saved) {
      try {
        const { rpps, token } = JSON.parse(saved);
        $("login-rpps").value = rpps;
        logIn(rpps, token).catch(() => logOut());
      } catch (_) {
        window.sessionStorage.removeItem(SESSION_KEY);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", wire);
})();
