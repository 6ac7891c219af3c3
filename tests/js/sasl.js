#!/usr/bin/env node
// kafkajs over SASL: usage
//   node sasl.js HOST:PORT TOPIC MECHANISM USER PASSWORD CA_FILE|- ok|refused
//
// MECHANISM is plain, scram-sha-256 or scram-sha-512; CA_FILE '-' means no TLS
// (SASL_PLAINTEXT). With `ok`, a producer sends 10 messages (acks=-1) and a
// consumer group reads them back. With `refused`, connecting must fail with a
// SASL authentication error (KafkaJSSASLAuthenticationError); nothing is sent.
// Exit code 0 = pass. A watchdog ends the process after 90 s.

'use strict';

const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');

const watchdog = setTimeout(() => {
  console.error('sasl.js: timed out after 90 s');
  process.exit(2);
}, 90000);
watchdog.unref();

async function main() {
  const [bootstrap, topic, mechanism, username, password, ca, expect] = process.argv.slice(2);
  if (!expect) {
    console.error('usage: node sasl.js HOST:PORT TOPIC MECHANISM USER PASSWORD CA|- ok|refused');
    process.exit(64);
  }
  const kafka = new Kafka({
    clientId: 'fjord-e2e-kafkajs-sasl',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    ssl: ca === '-' ? false : { ca: [fs.readFileSync(ca, 'utf-8')] },
    sasl: { mechanism, username, password },
    retry: { retries: 2 },
  });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  if (expect === 'refused') {
    try {
      await producer.connect();
    } catch (e) {
      if (e.name === 'KafkaJSSASLAuthenticationError' || /SASL/.test(String(e.message))) {
        console.log(`refused as expected: ${e.name}: ${e.message}`);
        return;
      }
      throw new Error(`refused, but not by SASL: ${e.name}: ${e.message}`);
    }
    throw new Error('connected with credentials that should have been refused');
  }
  await producer.connect();
  const values = Array.from({ length: 10 }, (_, i) => `js-${mechanism}-${i}`);
  await producer.send({ topic, acks: -1, messages: values.map((value) => ({ value })) });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `sasl-js-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  await new Promise((resolve, reject) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        const v = message.value.toString();
        if (v.startsWith(`js-${mechanism}-`)) got.push(v);
        if (got.length === values.length) resolve();
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  if (JSON.stringify(got) !== JSON.stringify(values)) {
    throw new Error(`read back ${JSON.stringify(got)}`);
  }
  console.log(`kafkajs ${mechanism}: produced and consumed ${values.length} messages`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e.stack || String(e));
    process.exit(1);
  },
);
