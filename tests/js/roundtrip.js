#!/usr/bin/env node
// kafkajs check against a Fjord broker: usage `node roundtrip.js HOST:PORT TOPIC`.
//
// 1. admin.createTopics: TOPIC with 3 partitions (must not exist yet);
//    fetchTopicMetadata shows 3 partitions with a leader.
// 2. Producer (acks=-1) sends 1,000 messages with keys and headers, explicit
//    partition i % 3, in batches of 100 (every other batch GZIP-compressed);
//    each response's baseOffset must equal the number of messages already
//    sent to that partition.
// 3. admin.fetchTopicOffsets: low watermark 0 and high watermark equal to the
//    count sent, per partition (1,000 in total).
//
// 4. A consumer group (subscribe, autoCommit) reads all 1,000 back: keys,
//    values, headers and per-partition order intact; committed offsets equal
//    the high watermarks.
// 5. admin.deleteTopicRecords moves the low watermarks (partition 0 to 10,
//    partition 1 to its end).
//
// Exit code 0 = pass; anything else = fail (reason on stderr).  A watchdog
// ends the process after 120 s.

'use strict';

const { Kafka, logLevel, Partitioners, CompressionTypes } = require('kafkajs');

const N_MESSAGES = 1000;
const PARTITIONS = 3;
const BATCH = 100;

const watchdog = setTimeout(() => {
  console.error('roundtrip.js: timed out after 120 s');
  process.exit(2);
}, 120000);
watchdog.unref();

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

async function main() {
  const [bootstrap, topic] = process.argv.slice(2);
  if (!bootstrap || !topic) {
    console.error('usage: node roundtrip.js HOST:PORT TOPIC');
    process.exit(64);
  }

  const kafka = new Kafka({
    clientId: 'fjord-e2e-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
  });

  const admin = kafka.admin();
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });

  await admin.connect();
  try {
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 15000,
    });
    check(created === true, `createTopics returned ${created} (topic already existed?)`);

    const md = await admin.fetchTopicMetadata({ topics: [topic] });
    const t = md.topics.find((x) => x.name === topic);
    check(t, `topic ${topic} missing from metadata`);
    check(t.partitions.length === PARTITIONS, `${t.partitions.length} partitions in metadata`);
    for (const p of t.partitions) {
      check(p.partitionErrorCode === 0, `partition ${p.partitionId} error ${p.partitionErrorCode}`);
      check(p.leader >= 0, `partition ${p.partitionId} has no leader`);
    }

    await producer.connect();
    const sent = new Array(PARTITIONS).fill(0);
    for (let start = 0; start < N_MESSAGES; start += BATCH) {
      const messages = [];
      for (let i = start; i < Math.min(start + BATCH, N_MESSAGES); i++) {
        messages.push({
          key: `key-${i}`,
          value: `value-${i}-${'x'.repeat(i % 100)}`,
          partition: i % PARTITIONS,
          headers: { idx: String(i), client: 'kafkajs' },
        });
      }
      const compression = (start / BATCH) % 2 === 1 ? CompressionTypes.GZIP : CompressionTypes.None;
      const res = await producer.send({ topic, messages, acks: -1, timeout: 15000, compression });
      const perPartition = new Array(PARTITIONS).fill(0);
      for (const m of messages) perPartition[m.partition]++;
      for (const r of res) {
        check(r.errorCode === 0, `produce error ${r.errorCode} on partition ${r.partition}`);
        check(
          String(r.baseOffset) === String(sent[r.partition]),
          `partition ${r.partition}: baseOffset ${r.baseOffset}, want ${sent[r.partition]}`,
        );
      }
      check(res.length === PARTITIONS, `send returned ${res.length} partition results`);
      for (let p = 0; p < PARTITIONS; p++) sent[p] += perPartition[p];
    }

    const offsets = await admin.fetchTopicOffsets(topic);
    check(offsets.length === PARTITIONS, `fetchTopicOffsets returned ${offsets.length} partitions`);
    let total = 0;
    for (const o of offsets) {
      check(String(o.low) === '0', `partition ${o.partition}: low watermark ${o.low}, want 0`);
      check(
        String(o.high) === String(sent[o.partition]),
        `partition ${o.partition}: high watermark ${o.high}, want ${sent[o.partition]}`,
      );
      total += Number(o.high);
    }
    check(total === N_MESSAGES, `high watermarks sum to ${total}, want ${N_MESSAGES}`);

    // 4. Consume everything back through a consumer group, committing as it goes.
    const groupId = `${topic}-group`;
    const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 });
    const received = new Map(); // partition -> [{offset, key, value, idx}]
    let count = 0;
    let resolveAll;
    const all = new Promise((resolve) => { resolveAll = resolve; });
    await consumer.connect();
    try {
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await consumer.run({
        autoCommit: true,
        eachMessage: async ({ partition, message }) => {
          if (!received.has(partition)) received.set(partition, []);
          received.get(partition).push({
            offset: Number(message.offset),
            key: message.key.toString(),
            value: message.value.toString(),
            idx: message.headers.idx.toString(),
            client: message.headers.client.toString(),
          });
          count++;
          if (count === N_MESSAGES) resolveAll();
        },
      });
      await Promise.race([
        all,
        new Promise((_, reject) => setTimeout(() => reject(new Error(`consumed only ${count} of ${N_MESSAGES}`)), 60000)),
      ]);
    } finally {
      await consumer.disconnect().catch(() => {});
    }
    for (let p = 0; p < PARTITIONS; p++) {
      const got = received.get(p) || [];
      check(got.length === sent[p], `partition ${p}: consumed ${got.length}, want ${sent[p]}`);
      got.forEach((m, j) => {
        check(m.offset === j, `partition ${p}: message ${j} has offset ${m.offset}`);
        const i = Number(m.idx);
        check(i % PARTITIONS === p, `partition ${p}: message idx ${i} belongs elsewhere`);
        check(m.key === `key-${i}`, `partition ${p} offset ${j}: key ${m.key}`);
        check(m.value === `value-${i}-${'x'.repeat(i % 100)}`, `partition ${p} offset ${j}: value mismatch`);
        check(m.client === 'kafkajs', `partition ${p} offset ${j}: header client ${m.client}`);
        if (j > 0) check(i > Number(got[j - 1].idx), `partition ${p}: out of order at offset ${j}`);
      });
    }
    // The group's committed offsets are the high watermarks.
    const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
    for (const o of committed[0].partitions) {
      check(String(o.offset) === String(sent[o.partition]), `committed offset of partition ${o.partition} is ${o.offset}, want ${sent[o.partition]}`);
    }
    // 5. admin.deleteTopicRecords (DeleteRecords): partition 0 before offset 10, partition 1
    //    everything (-1); the low watermarks move there, the high watermarks stay.
    await admin.deleteTopicRecords({
      topic,
      partitions: [{ partition: 0, offset: '10' }, { partition: 1, offset: '-1' }],
    });
    const trimmed = await admin.fetchTopicOffsets(topic);
    for (const o of trimmed) {
      const want = { 0: '10', 1: String(sent[1]), 2: '0' }[o.partition];
      check(String(o.low) === want, `after deleteTopicRecords, partition ${o.partition}: low watermark ${o.low}, want ${want}`);
      check(String(o.high) === String(sent[o.partition]), `after deleteTopicRecords, partition ${o.partition}: high watermark ${o.high}`);
    }
    console.log(`roundtrip.js: OK, ${total} messages produced and consumed; committed ${JSON.stringify(committed[0].partitions)}; deleteTopicRecords moved the low watermarks`);
  } finally {
    await producer.disconnect().catch(() => {});
    await admin.disconnect().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`roundtrip.js: FAILED: ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  },
);
