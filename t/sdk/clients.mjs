// Official client libraries against the module, unmodified: the `openai`
// and `@anthropic-ai/sdk` npm packages.  Prints one "ok - ..." or
// "not ok - ..." line per check (t/12-sdk.t turns them into TAP).
//
//   node t/sdk/clients.mjs PORT NODE_MODULES_DIR
import { createRequire } from 'node:module';

const [port, modules] = process.argv.slice(2);
const require = createRequire(modules + '/');
const OpenAI = require('openai').default ?? require('openai');
const AnthropicMod = require('@anthropic-ai/sdk');
const Anthropic = AnthropicMod.default ?? AnthropicMod;

const base = `http://127.0.0.1:${port}`;
let failed = 0;
function check(cond, name, detail) {
  if (cond) console.log(`ok - ${name}`);
  else { failed++; console.log(`not ok - ${name}${detail !== undefined ? ': ' + JSON.stringify(detail).slice(0, 300) : ''}`); }
}
async function attempt(name, fn) {
  try { await fn(); } catch (e) { check(false, name, String(e && e.stack || e)); }
}

const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'sk-test', maxRetries: 0 });
const messages = [{ role: 'user', content: 'Hello' }];

await attempt('openai models.list', async () => {
  const ids = [];
  for await (const m of openai.models.list()) ids.push(m.id);
  check(ids.includes('demo') && ids.includes('deepseek-chat'), 'openai models.list lists the models', ids);
});

let greedy;
await attempt('openai chat', async () => {
  const r = await openai.chat.completions.create({ model: 'demo', messages, max_tokens: 6, temperature: 0 });
  greedy = r.choices[0].message.content;
  check(typeof greedy === 'string' && greedy.length > 0, 'openai chat.completions.create', r);
  check(r.usage.completion_tokens === 6 && r.choices[0].finish_reason === 'length', 'openai chat usage and finish_reason', r.usage);
});

await attempt('openai chat stream', async () => {
  const stream = await openai.chat.completions.create({ model: 'demo', messages, max_tokens: 6, temperature: 0,
                                                        stream: true, stream_options: { include_usage: true } });
  let text = '', usage = null, finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(text === greedy, 'openai streamed chat equals the non-streamed text', [text, greedy]);
  check(usage && usage.completion_tokens === 6 && finish === 'length', 'openai stream usage and finish_reason', usage);
});

await attempt('openai stream helper', async () => {
  const runner = openai.beta.chat.completions.stream({ model: 'demo', messages, max_tokens: 6, temperature: 0 });
  const final = await runner.finalChatCompletion();
  check(final.choices[0].message.content === greedy, 'openai beta stream helper assembles the message', final.choices[0]);
});

await attempt('openai completions', async () => {
  const r = await openai.completions.create({ model: 'demo', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
  check(typeof r.choices[0].text === 'string' && r.usage.completion_tokens === 5, 'openai completions.create', r);
});

await attempt('openai tool round trip', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city',
                   parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const r = await openai.chat.completions.create({ model: 'demo', max_tokens: 4, temperature: 0, tools, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c":21}' }] });
  check(r.choices.length === 1 && r.usage.prompt_tokens > 20, 'openai tool call round trip in the history', r.usage);
});

// Random weights never call a tool on their own: tool_choice forces the
// call through the output grammar, with arguments of the declared types.
const weather = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city',
                   parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' },
                                                               unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
                                 required: ['city', 'days', 'unit'] } } }];
function weatherArgs(call) {
  const a = JSON.parse(call.function.arguments);
  return call.function.name === 'get_weather' && typeof a.city === 'string' && Number.isInteger(a.days)
         && ['celsius', 'fahrenheit'].includes(a.unit);
}
async function answerTool(call, name) {
  const r = await openai.chat.completions.create({ model: 'demo', max_tokens: 4, temperature: 0, tools: weather, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [call] },
    { role: 'tool', tool_call_id: call.id, content: '{"temp_c":21}' }] });
  check(r.choices.length === 1 && r.choices[0].finish_reason !== 'tool_calls' && r.usage.prompt_tokens > 40,
        name, r);
}

await attempt('openai forced tool call', async () => {
  const r = await openai.chat.completions.create({ model: 'demo', max_tokens: 300, temperature: 0, tools: weather,
    tool_choice: 'required', messages: [{ role: 'user', content: 'Weather in Paris?' }] });
  const c = r.choices[0];
  check(c.finish_reason === 'tool_calls' && c.message.tool_calls?.length === 1 && weatherArgs(c.message.tool_calls[0]),
        'openai tool_choice required: a tool call with parseable, typed arguments', c);
  await answerTool(c.message.tool_calls[0], 'openai tool result sent back: the server answers');
});

await attempt('openai forced tool call stream', async () => {
  const stream = await openai.chat.completions.create({ model: 'demo', max_tokens: 300, temperature: 0.8, seed: 7,
    tools: weather, tool_choice: { type: 'function', function: { name: 'get_weather' } }, stream: true,
    messages: [{ role: 'user', content: 'Weather in Paris?' }] });
  const calls = [];
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      for (const d of c.delta?.tool_calls ?? []) {
        calls[d.index] ??= { id: '', type: 'function', function: { name: '', arguments: '' } };
        if (d.id) calls[d.index].id = d.id;
        calls[d.index].function.name += d.function?.name ?? '';
        calls[d.index].function.arguments += d.function?.arguments ?? '';
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(finish === 'tool_calls' && calls.length === 1 && weatherArgs(calls[0]),
        'openai streamed named tool_choice: tool_calls deltas with parseable arguments', [finish, calls]);
  await answerTool(calls[0], 'openai streamed tool result sent back: the server answers');
});

await attempt('openai json_object', async () => {
  const r = await openai.chat.completions.create({ model: 'demo', max_tokens: 300, temperature: 0,
    response_format: { type: 'json_object' }, messages: [{ role: 'user', content: 'A JSON object, please.' }] });
  const v = JSON.parse(r.choices[0].message.content);
  check(typeof v === 'object' && v !== null && !Array.isArray(v) && r.choices[0].finish_reason === 'stop',
        'openai response_format json_object: the content parses as an object', r.choices[0]);
});

await attempt('openai reasoning', async () => {
  const r = await openai.chat.completions.create({ model: 'deepseek-reasoner', messages, max_tokens: 4, temperature: 0 });
  check(typeof r.choices[0].message.reasoning_content === 'string', 'openai deepseek-reasoner returns reasoning_content', r.choices[0]);
});

await attempt('openai errors', async () => {
  try {
    await openai.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 2 });
    check(false, 'openai unknown model throws');
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError && e.status === 404 && /no-such-model/.test(e.message),
          'openai unknown model is a NotFoundError', String(e));
  }
  try {
    await openai.chat.completions.create({ model: 'demo', messages, max_tokens: 2, temperature: 'hot' });
    check(false, 'openai bad parameter throws');
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature',
          'openai bad parameter is a BadRequestError naming the param', [String(e), e.param]);
  }
});

// errors nginx produces before the module runs (t/15-nginx-errors.t): the SDK
// must read them as typed API errors, not fail on an HTML page
const big = 'x'.repeat(1100 * 1024);      // over client_max_body_size (1m)
const pad = 'p'.repeat(20000);            // over large_client_header_buffers (8k)
async function nginxError(name, call, want) {
  try {
    await call();
    check(false, `${name} throws`);
  } catch (e) {
    check(want(e), name, [String(e), e.status, e.error]);
  }
}
await attempt('openai nginx errors', async () => {
  await nginxError('openai: a body over client_max_body_size is a 413 APIError with code request_too_large',
    () => openai.chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: big }] }),
    e => e instanceof OpenAI.APIError && e.status === 413 && e.code === 'request_too_large'
         && /larger than/.test(e.message));
  await nginxError('openai: a URI too long is a 414 APIError with code uri_too_long',
    () => openai.models.list({ query: { pad } }),
    e => e instanceof OpenAI.APIError && e.status === 414 && e.code === 'uri_too_long');
  await nginxError('openai: a header too large is a BadRequestError with code bad_request',
    () => openai.chat.completions.create({ model: 'demo', messages, max_tokens: 2 },
                                         { headers: { 'x-pad': pad } }),
    e => e instanceof OpenAI.BadRequestError && e.status === 400 && e.code === 'bad_request');
});

const anthropic = new Anthropic({ baseURL: base, apiKey: 'sk-ant-test', maxRetries: 0 });

let agreedy;
await attempt('anthropic messages', async () => {
  const r = await anthropic.messages.create({ model: 'demo', max_tokens: 6, temperature: 0, messages });
  agreedy = r.content.filter(b => b.type === 'text').map(b => b.text).join('');
  check(r.type === 'message' && r.stop_reason === 'max_tokens' && r.usage.output_tokens === 6,
        'anthropic messages.create', r);
  check(agreedy === greedy, 'anthropic text equals the OpenAI text for the same conversation', [agreedy, greedy]);
});

await attempt('anthropic stream', async () => {
  const stream = anthropic.messages.stream({ model: 'demo', max_tokens: 6, temperature: 0, messages });
  let text = '';
  stream.on('text', t => { text += t; });
  const final = await stream.finalMessage();
  check(text === agreedy && final.stop_reason === 'max_tokens' && final.usage.output_tokens === 6,
        'anthropic messages.stream', [text, final]);
});

await attempt('anthropic thinking', async () => {
  const r = await anthropic.messages.create({ model: 'demo', max_tokens: 4, temperature: 0, messages,
                                              thinking: { type: 'enabled', budget_tokens: 1024 } });
  check(r.content[0].type === 'thinking', 'anthropic thinking block', r.content);
});

await attempt('anthropic tools', async () => {
  const r = await anthropic.messages.create({ model: 'demo', max_tokens: 3, temperature: 0,
    tools: [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }],
    messages: [{ role: 'user', content: 'Weather in Paris?' },
               { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } }] },
               { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: '21C' }] }] });
  check(r.type === 'message', 'anthropic tool_use / tool_result round trip', r);
});

await attempt('anthropic forced tool_use', async () => {
  const tools = [{ name: 'get_weather', description: 'Weather',
                   input_schema: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } },
                                   required: ['city', 'days'] } }];
  const ask = { role: 'user', content: 'Weather in Paris?' };
  const r = await anthropic.messages.create({ model: 'demo', max_tokens: 300, temperature: 0, tools,
                                              tool_choice: { type: 'tool', name: 'get_weather' }, messages: [ask] });
  const use = r.content.find(b => b.type === 'tool_use');
  check(r.stop_reason === 'tool_use' && use && use.name === 'get_weather' && typeof use.input.city === 'string'
        && Number.isInteger(use.input.days), 'anthropic tool_choice tool: a tool_use block with typed input', r);
  const stream = anthropic.messages.stream({ model: 'demo', max_tokens: 300, temperature: 0, tools,
                                            tool_choice: { type: 'any' }, messages: [ask] });
  const final = await stream.finalMessage();
  const suse = final.content.find(b => b.type === 'tool_use');
  check(final.stop_reason === 'tool_use' && suse && JSON.stringify(suse.input) === JSON.stringify(use.input),
        'anthropic streamed tool_choice any: the same tool_use input', [final, use]);
  const back = await anthropic.messages.create({ model: 'demo', max_tokens: 4, temperature: 0, tools, messages: [ask,
    { role: 'assistant', content: r.content },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '21C' }] }] });
  check(back.type === 'message' && back.stop_reason !== 'tool_use', 'anthropic tool_result sent back: the server answers', back);
});

await attempt('anthropic errors', async () => {
  try {
    await anthropic.messages.create({ model: 'no-such-model', max_tokens: 2, messages });
    check(false, 'anthropic unknown model throws');
  } catch (e) {
    check(e instanceof Anthropic.NotFoundError && e.status === 404, 'anthropic unknown model is a NotFoundError', String(e));
  }
  await nginxError('anthropic: a body over client_max_body_size is a 413 APIError of type request_too_large',
    () => anthropic.messages.create({ model: 'demo', max_tokens: 2, messages: [{ role: 'user', content: big }] }),
    e => e instanceof Anthropic.APIError && e.status === 413 && e.error?.error?.type === 'request_too_large');
  await nginxError('anthropic: a URI too long is a 414 APIError of type invalid_request_error',
    () => anthropic.messages.create({ model: 'demo', max_tokens: 2, messages }, { query: { pad } }),
    e => e instanceof Anthropic.APIError && e.status === 414 && e.error?.error?.type === 'invalid_request_error');
  await nginxError('anthropic: a header too large is a BadRequestError',
    () => anthropic.messages.create({ model: 'demo', max_tokens: 2, messages }, { headers: { 'x-pad': pad } }),
    e => e instanceof Anthropic.BadRequestError && e.status === 400 && e.error?.error?.type === 'invalid_request_error');
});

process.exit(failed ? 1 : 0);
