// The official JupyterLab client library (@jupyterlab/services) against the appliance, with a token.
// Environment: APPLIANCE_URL (https://host:port/), APPLIANCE_TOKEN, NODE_EXTRA_CA_CERTS (the appliance's CA),
// NODE_PATH (where npm installed @jupyterlab/services and ws). APPLIANCE_CHECK=status only asks /api/status.
// Prints one JSON line: what each step got.
const { ServerConnection, KernelManager, ContentsManager, TerminalManager } = require('@jupyterlab/services');
const WebSocket = require('ws');
const { PageConfig } = require('@jupyterlab/coreutils');

PageConfig.setOption('terminalsAvailable', 'true');  // what the page config tells a browser

const serverSettings = ServerConnection.makeSettings({
  baseUrl: process.env.APPLIANCE_URL, token: process.env.APPLIANCE_TOKEN, WebSocket,
});

function within(seconds, promise, what) {
  const timer = new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), seconds * 1000));
  return Promise.race([promise, timer]);
}

async function execute(code) {
  const kernels = new KernelManager({ serverSettings });
  const kernel = await kernels.startNew({ name: 'python3' });
  let result = null;
  try {
    const future = kernel.requestExecute({ code });
    future.onIOPub = (msg) => {
      if (msg.header.msg_type === 'execute_result') result = msg.content.data['text/plain'];
    };
    await within(60, future.done, 'execute');
  } finally {
    await kernel.shutdown();
    kernels.dispose();
  }
  return result;
}

async function contents() {
  const manager = new ContentsManager({ serverSettings });
  const text = 'appliance '.repeat(512 * 1024);  // 5 MiB
  await manager.save('services-5mb.txt', { type: 'file', format: 'text', content: text });
  const got = await manager.get('services-5mb.txt', { content: true });
  return { saved: text.length, got: got.content.length, same: got.content === text };
}

async function terminal() {
  const terminals = new TerminalManager({ serverSettings });
  const session = await terminals.startNew();
  let output = '';
  const seen = new Promise((resolve) => {
    session.messageReceived.connect((_, msg) => {
      if (msg.type === 'stdout') output += msg.content.join('');
      if (output.includes('marker-42')) resolve();
    });
  });
  try {
    await within(30, new Promise((resolve) => {
      const start = () => (session.connectionStatus === 'connected' ? resolve() : setTimeout(start, 50));
      start();
    }), 'terminal connection');
    session.send({ type: 'stdin', content: ['echo marker-$((6*7))\r'] });
    await within(30, seen, 'terminal output');
  } finally {
    await session.shutdown();
    terminals.dispose();
  }
  return output.includes('marker-42') ? 'marker-42' : output;
}

async function main() {
  if (process.env.APPLIANCE_CHECK === 'status') {
    const r = await ServerConnection.makeRequest(`${serverSettings.baseUrl}api/status`, {}, serverSettings);
    return { status: r.status };
  }
  return { execute: await execute('6*7'), contents: await contents(), terminal: await terminal() };
}

main().then(
  (out) => { console.log(JSON.stringify(out)); process.exit(0); },
  (err) => { console.error(String(err && err.stack || err)); process.exit(1); },
);
