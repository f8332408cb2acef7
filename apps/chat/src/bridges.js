// The Bridges page: every bridge signed in as this user (GET /api/bridge/status), its models and whether
// it reaches its model server; with none connected, what to do next and a link to "Get started".

const $ = (id) => document.getElementById(id);

function when(epochSeconds) {
  if (!epochSeconds) return "";
  const date = new Date(Number(epochSeconds) * 1000);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

function field(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

/** @param {string} cloudUrl what `login` is given: the cloud publishes the rest at a well-known URL */
export function showBridges(bridges, getStartedUrl, cloudUrl) {
  $("get-started").href = getStartedUrl;
  $("bridge-commands").textContent = `cloudtolocalllm-bridge login ${cloudUrl}\ncloudtolocalllm-bridge run`;
  $("bridges-empty").hidden = bridges.length > 0;
  $("bridges").replaceChildren(
    ...bridges.map((bridge) => {
      const li = document.createElement("li");
      li.className = "bridge";
      li.dataset.state = bridge.backend_reachable ? "ok" : "unreachable";
      const title = document.createElement("h3");
      title.textContent = bridge.name || bridge.id;
      const state = document.createElement("p");
      state.className = `state ${bridge.backend_reachable ? "ok" : "warn"}`;
      state.textContent = bridge.backend_reachable
        ? `Connected; its ${bridge.backend_kind || "model server"} answers`
        : `Connected, but its ${bridge.backend_kind || "model server"} does not answer: start it (e.g. ollama serve) or check the bridge's --backend`;
      const facts = document.createElement("dl");
      const models = bridge.models || [];
      field(facts, "Models", models.length ? models.join(", ") : "none listed");
      if (bridge.version) field(facts, "Bridge version", `${bridge.version}${bridge.platform ? ` on ${bridge.platform}` : ""}`);
      if (bridge.connected_since) field(facts, "Connected since", when(bridge.connected_since));
      field(facts, "Answers in progress", String(bridge.streams_in_flight || 0));
      li.append(title, state, facts);
      return li;
    }),
  );
}
