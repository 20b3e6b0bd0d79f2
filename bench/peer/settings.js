// Node-RED settings for the peer stack of bench/compare.sh (Mosquitto + Node-RED 4).
//
// Tuned the way Node-RED's documentation suggests for a production flow: warnings and errors
// only in the log (no metrics, no audit, no debug nodes in the flow), no editor extras, and a
// bounded HTTP request timeout. Everything the flow needs at run time comes from the
// environment that compare.sh sets:
//   PEER_NODERED_PORT  admin/editor port (loopback only)
//   PEER_MQTT_PORT     the Mosquitto listener
//   PEER_BACKENDS      base URL of the mock backends, e.g. http://127.0.0.1:19100
//   PEER_CLIENT_ID     this instance's MQTT client id (persistent session)
//   PEER_PRESS_TOPIC   yijian/v1/devices/+/press; with several instances the shared
//                      subscription $share/peer/yijian/v1/devices/+/press (Mosquitto hands
//                      each press to one of them, round robin)
// The broker account's credentials are in flows_cred.json next to the flow file, written by
// compare.sh in plain text (credentialSecret: false) from the run's generated password.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.PEER_NODERED_PORT || "18880", 10),
    flowFile: "flows.json",
    flowFilePretty: true,
    credentialSecret: false,

    // One attempt to a backend may take this long (default 120 s). Node's timer also counts
    // the time the event loop runs behind, so a short timeout makes an overloaded Node-RED
    // give up on requests the backend has already answered and retry them, feeding the
    // overload; 30 s keeps that out of the measurement while still bounding a hung backend.
    httpRequestTimeout: 30000,

    logging: {
        console: { level: "warn", metrics: false, audit: false },
    },

    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
    editorTheme: { projects: { enabled: false } },
};
