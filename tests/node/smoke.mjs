// node-redis with its default options against a server: commands, INFO, and a subscriber.
// Usage: node smoke.mjs PORT  ->  prints one JSON object with what the client saw (the Python test checks it).
import { createClient } from 'redis';

const port = Number(process.argv[2]);
const url = `redis://127.0.0.1:${port}`;
const failures = [];
const onError = (error) => failures.push(String(error));

const client = createClient({ url });
client.on('error', onError);
await client.connect();
const seen = {};
seen.ping = await client.ping();
seen.set = await client.set('node:key', 'value');
seen.get = await client.get('node:key');
seen.missing = await client.get('node:missing');
seen.incr = await client.incr('node:counter');
seen.mget = await client.mGet(['node:key', 'node:missing']);
seen.clientInfo = await client.sendCommand(['CLIENT', 'INFO']);
seen.info = (await client.info('server')).split('\r\n')[0];
seen.configGet = await client.configGet('maxclients');

const subscriber = client.duplicate();
subscriber.on('error', onError);
await subscriber.connect();
const received = [];
let allArrived;
const arrived = new Promise((resolve) => { allArrived = resolve; });
// subscribe() resolves once the server confirmed the subscription, so no message below can be missed.
await subscriber.subscribe('node:channel', (message, channel) => {
  received.push([channel, message]);
  if (received.length === 2) allArrived();
});
seen.publish = [await client.publish('node:channel', 'first'), await client.publish('node:channel', 'second')];
const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no message within 10 s')), 10000));
await Promise.race([arrived, timeout]);
seen.received = received;
seen.numsub = await client.sendCommand(['PUBSUB', 'NUMSUB', 'node:channel']);
await subscriber.unsubscribe('node:channel');
seen.afterUnsubscribe = await subscriber.ping();
await subscriber.quit();
await client.quit();
seen.failures = failures;
console.log(JSON.stringify(seen));
