// Drives the Eddy console in a real headless Chromium for the console tests
// (tests/tests/it/console.rs): `node console.mjs <step>`, with the console's address and
// tokens in the environment. Each step opens the page, acts as an operator would, checks what
// the page shows, prints one JSON object of what it saw, and exits 0; on failure it saves a
// screenshot (SHOTS/failure-<step>.png) and exits 1 with the reason.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.EDDY_BROWSER_TOOLS, 'package.json'));
const { chromium } = require('playwright-core');

const step = process.argv[2];
const url = process.env.CONSOLE_URL;
const shots = process.env.SHOTS;
const operator = process.env.OPERATOR_TOKEN;
const viewer = process.env.VIEWER_TOKEN;
const WAIT = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const problems = [];
page.on('pageerror', (e) => problems.push('page error: ' + e.message));

const text = (sel) => page.locator(sel).innerText();
const open = async (view, token = operator) => {
  await page.goto(`${url}/?token=${encodeURIComponent(token)}#${view}`);
  await page.waitForFunction(() => document.body.dataset.updated, null, { timeout: WAIT });
};
// The hosts table's cells for `host`.
const hostRow = async (host) => {
  const rows = await page.locator('#hosts tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.innerText)));
  return rows.find((r) => r[0] === host);
};
const until = async (what, check) => {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('waited 30 s for ' + what);
    await page.waitForTimeout(250);
  }
};

// Clicks Deploy (a file chosen) and waits until every host runs the new version.
async function deployed() {
  await page.click('#deploy');
  const result = await until('the deploy', async () => {
    const t = await text('#deploy-result');
    if (t && !t.startsWith('deployed') && !t.includes('working')) throw new Error(t);
    return t.startsWith('deployed as version ') ? t : null;
  });
  const version = result.replace('deployed as version ', '').trim();
  const running = await until('the hosts to run ' + version, async () => {
    const cells = await page.locator('#running tbody tr td:nth-child(3)').allInnerTexts();
    return cells.length && cells.every((c) => c === version) ? cells : null;
  });
  const history = await text('#deployments');
  return { version, running, history };
}

const steps = {
  // The overview shows the host running, and its counts move while events flow.
  async overview() {
    const started = Date.now();
    await page.goto(`${url}/?token=${encodeURIComponent(operator)}`);
    await page.locator('#hosts tbody tr').first().waitFor({ timeout: WAIT });
    const firstPaintMs = Date.now() - started;
    const host = process.env.HOST;
    const before = await until('the host in the table', () => hostRow(host));
    const eventsBefore = Number(before[4].replace(/,/g, ''));
    const after = await until('its event count to move', async () => {
      const r = await hostRow(host);
      return r && Number(r[4].replace(/,/g, '')) > eventsBefore ? r : null;
    });
    const rate = await until('a rate above zero', async () => {
      const v = Number((await text('#in-rate')).replace(/,/g, ''));
      return v > 0 ? v : null;
    });
    // Wait for the plot to hold a few points before the picture.
    await page.waitForTimeout(3_000);
    const points = await page.locator('#plot-rates polyline').first().getAttribute('points');
    await page.screenshot({ path: path.join(shots, 'console-overview.png') });
    return {
      state: before[1], partitions: before[2], plugin: before[3], events_before: eventsBefore,
      events_after: Number(after[4].replace(/,/g, '')), in_rate: rate,
      plotted: points.split(' ').length, first_paint_ms: firstPaintMs,
    };
  },

  // A checkpoint and a savepoint taken with the buttons.
  async checkpoints() {
    await open('checkpoints');
    await page.click('#take-checkpoint');
    const taken = await until('the checkpoint', async () => {
      const t = await text('#checkpoint-result');
      return t.startsWith('checkpoint taken: ') ? t : (t.includes('working') || t === '' ? null : Promise.reject(new Error(t)));
    });
    const id = taken.match(/checkpoint taken: (\d+)/)[1];
    await until('checkpoint ' + id + ' in the table', async () => {
      const ids = await page.locator('#checkpoints tbody tr td:nth-child(2)').allInnerTexts();
      return ids.includes(id);
    });
    await page.click('#take-savepoint');
    const job = await until('the savepoint to be written', async () => {
      const state = await page.locator('#jobs .job').first().getAttribute('data-state').catch(() => null);
      if (state === 'failed') throw new Error(await text('#jobs'));
      return state === 'done' ? await text('#jobs .job') : null;
    });
    return { checkpoint: Number(id), savepoint: job };
  },

  // Dead letters listed by kind; the first one shown whole, then replayed.
  async dlq() {
    await open('dlq');
    await page.locator('#dlq tbody tr').first().waitFor({ timeout: WAIT });
    const kinds = await text('#dlq-kinds');
    const rows = await page.locator('#dlq tbody tr').count();
    const first = page.locator('#dlq tbody tr').first();
    const sequence = Number(await first.locator('td:nth-child(2)').innerText());
    await first.locator('td:nth-child(2) a').click();
    await page.locator('#dlq-detail').waitFor({ state: 'visible', timeout: WAIT });
    const payload = await text('#dlq-payload');
    const headers = await text('#dlq-headers');
    await first.locator('input.pick').check();
    await page.click('#dlq-replay-selected');
    const replayed = await until('the replay', async () => {
      const t = await text('#dlq-result');
      return t.startsWith('replayed: ') ? t : null;
    });
    await until('the replayed letter to leave the list', async () => {
      const seqs = await page.locator('#dlq tbody tr td:nth-child(2)').allInnerTexts();
      return !seqs.includes(String(sequence));
    });
    return { kinds, rows, sequence, payload, headers, replayed };
  },

  // A plugin uploaded with the form becomes the running version.
  async deploy() {
    await open('deployments');
    await page.setInputFiles('#deploy-file', process.env.DEPLOY_WASM);
    return await deployed();
  },

  // A second upload, then back to the first with its row's button.
  async rollback() {
    await open('deployments');
    await page.setInputFiles('#deploy-file', process.env.DEPLOY_WASM);
    const next = await deployed();
    const back = page.locator('#deployments tbody tr', { hasText: 'superseded' }).first();
    const previous = await back.locator('td:nth-child(3)').innerText();
    await back.locator('button.rollback').click();
    const rolledBack = await until('the hosts to run ' + previous + ' again', async () => {
      const cells = await page.locator('#running tbody tr td:nth-child(3)').allInnerTexts();
      return cells.length && cells.every((c) => c === previous) ? previous : null;
    });
    return { deployed: next.version, rolled_back_to: rolledBack };
  },

  // A plugin uploaded as shadow: its report fills in while events flow, then Discard ends it.
  async shadow() {
    await open('deployments');
    await page.setInputFiles('#deploy-file', process.env.SHADOW_WASM);
    await page.check('#deploy-shadow');
    await page.click('#deploy');
    const result = await until('the shadow deploy', async () => {
      const t = await text('#deploy-result');
      if (t && !t.startsWith('deployed') && !t.includes('working')) throw new Error(t);
      return t.startsWith('deployed as shadow, version ') ? t : null;
    });
    const version = result.replace('deployed as shadow, version ', '').trim();
    const rows = (sel) => page.locator(sel + ' tbody tr').evaluateAll((trs) =>
      trs.map((tr) => [...tr.children].map((td) => td.innerText)));
    // Until the shadow has found a difference on the output subject.
    const subjects = await until('a difference in the shadow report', async () => {
      const r = await rows('#shadow-subjects');
      return r.some((row) => Number(row[3]) > 0) ? r : null;
    });
    const summary = await text('#shadow-summary');
    const samples = await rows('#shadow-samples');
    await page.click('#shadow-discard');
    await until('the shadow to go', async () => await page.locator('#shadow').isHidden());
    const history = await text('#deployments');
    return { version, summary, subjects, samples, history };
  },

  // Keyed state of one key, and a broadcast table, looked up from the page.
  async state() {
    await open('state');
    await page.locator('#state-name option').first().waitFor({ state: 'attached', timeout: WAIT });
    const states = await page.locator('#state-name option').allInnerTexts();
    await page.selectOption('#state-name', { index: 0 });
    await page.fill('#state-key', process.env.KEY);
    await page.click('#state-form button');
    const answer = await until('the answer', async () => {
      const t = await text('#state-answer');
      return t ? t : null;
    });
    // The list state of the same key.
    await page.evaluate(() => { document.getElementById('state-answer').textContent = ''; });
    await page.selectOption('#state-name', { index: 1 });
    await page.click('#state-form button');
    const list = await until('the list', async () => {
      const t = await text('#state-answer');
      return t ? t : null;
    });
    // The value state as of a retained checkpoint.
    await page.evaluate(() => { document.getElementById('state-answer').textContent = ''; });
    await page.selectOption('#state-name', { index: 0 });
    await page.fill('#state-as-of', process.env.AS_OF);
    await page.click('#state-form button');
    const past = await until('the answer as of a checkpoint', async () => {
      const t = await text('#state-answer');
      return t ? t : null;
    });
    await page.fill('#state-as-of', '');
    // A broadcast table from its first entry.
    await page.selectOption('#broadcast-name', { index: 0 });
    await page.click('#broadcast-form button');
    const broadcast = await until('the table', async () => {
      const rows = await page.locator('#broadcast tbody tr').evaluateAll((trs) =>
        trs.map((tr) => [...tr.children].map((td) => td.innerText)));
      return rows.length ? rows : null;
    });
    return { states, answer: JSON.parse(answer), list: JSON.parse(list), past: JSON.parse(past), broadcast };
  },

  // A read-only token sees everything, and every action is refused to it.
  async readonly() {
    await open('checkpoints', viewer);
    const role = await text('#role');
    const disabled = await page.locator('button.act').evaluateAll((bs) => bs.map((b) => b.disabled));
    const forced = await page.evaluate(async (t) => {
      const r = await fetch('/api/checkpoint', { method: 'POST', headers: { Authorization: 'Bearer ' + t } });
      return { status: r.status, body: await r.json() };
    }, viewer);
    await page.goto(`${url}/?token=wrong#overview`);
    await page.locator('#signin').waitFor({ state: 'visible', timeout: WAIT });
    const signin = await text('#signin-error');
    return { role, disabled, forced, signin };
  },

  // The overview left open for WATCH_MS (the console-cost benchmark).
  async watch() {
    await open('overview');
    let updates = 0;
    let last = null;
    const end = Date.now() + Number(process.env.WATCH_MS || 60_000);
    while (Date.now() < end) {
      const u = await page.evaluate(() => document.body.dataset.updated);
      if (u !== last) { updates += 1; last = u; }
      await page.waitForTimeout(1_000);
    }
    return { updates };
  },

  // The hosts table shows what the test did to the host: `gone`, or running again.
  async host() {
    await open('overview');
    const want = process.env.EXPECT;
    const row = await until(`host ${process.env.HOST} ${want}`, async () => {
      const r = await hostRow(process.env.HOST);
      return r && r[1].startsWith(want) ? r : null;
    });
    return { state: row[1] };
  },
};

try {
  if (!steps[step]) throw new Error(`no step ${step}; one of ${Object.keys(steps).join(', ')}`);
  const seen = await steps[step]();
  if (problems.length) throw new Error(problems.join('; '));
  console.log(JSON.stringify(seen));
  await browser.close();
} catch (e) {
  await page.screenshot({ path: path.join(shots, `failure-${step}.png`), fullPage: true }).catch(() => {});
  console.error(`${step}: ${e.message}\n${problems.join('\n')}`);
  await browser.close();
  process.exit(1);
}
