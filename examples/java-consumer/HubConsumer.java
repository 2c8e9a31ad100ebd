/*
 * A hospital's consumer of its own hub topic, hub.pathway.<recipient>.v1, in plain Java 17.
 *
 * It reads the topic with the Apache Kafka client, asks the hub's key service for the data key named
 * by each record's hub-key-id header (authenticated with the recipient's own credential), and opens
 * the record with the JDK's AES-GCM. It knows the hub only through its documentation
 * (docs/SECURITY.md, "The envelope, byte for byte" and "Recipient key access"), and prints one JSON
 * line per opened record on stdout:
 *
 *   {"topic": "...", "partition": 0, "offset": 12, "key": "pt-...", "event": { the pathway event }}
 *
 * Configuration, from the environment (README.md):
 *   KAFKA_BOOTSTRAP_SERVERS   host:port[,host:port]
 *   KAFKA_TOPIC               hub.pathway.<recipient id>.v1 (with the deployment's topic prefix, if any)
 *   KAFKA_GROUP_ID            <recipient id> or <recipient id>.<anything> (the only groups its ACLs allow)
 *   KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) or SASL_SSL
 *   KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_FILE   for SASL_SSL (SCRAM-SHA-512)
 *   KEY_SERVICE_URL           https://host:port of the hub's key service
 *   KEY_SERVICE_TOKEN_FILE    the recipient's credential (hub recipients credentials issue)
 *   KEY_SERVICE_CA_FILE       the CA that signed the key service's certificate (PEM)
 *
 * Arguments: --idle-exit SECONDS stops after that long without a new record (default: run until
 * stopped); --check-vectors FILE checks this implementation against the hub's published test vectors
 * (docs/envelope-vectors.json) and exits 0 when every one passes.
 *
 * Run it with the single-file source launcher (no build step):
 *   java -cp "$(cat classpath.txt)" HubConsumer.java --idle-exit 30
 */

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.Collection;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class HubConsumer {

    /** The value of the hub-enc header, and the first field of the associated data. */
    static final String SCHEME = "aes-256-gcm/v1";
    static final int NONCE_BYTES = 12;
    static final int TAG_BITS = 128;

    /** Exit codes: 0 done, 1 a test vector failed, 2 bad configuration, 3 credential refused, 4 key service unreachable. */
    static final int EXIT_VECTORS = 1, EXIT_CONFIG = 2, EXIT_CREDENTIAL = 3, EXIT_UNAVAILABLE = 4;

    /** Why a record could not be opened: the hub's stable error code. Such a record is skipped. */
    static final class Unopenable extends Exception {
        final String code;

        Unopenable(String code) {
            super(code);
            this.code = code;
        }
    }

    /** A failure the consumer must stop on rather than skip records: nothing is committed past it. */
    static final class Fatal extends RuntimeException {
        final int exitCode;

        Fatal(int exitCode, String message) {
            super(message);
            this.exitCode = exitCode;
        }
    }

    // --- the envelope (docs/SECURITY.md, "The envelope, byte for byte") ---------------------------

    /** "HE" | version 1 | key id length (1 byte) | key id (UTF-8) | nonce (12) | ciphertext | tag (16). */
    record Envelope(String keyId, byte[] nonce, byte[] ciphertextAndTag) {
        static Envelope parse(byte[] value) throws Unopenable {
            if (value == null || value.length < 4 || value[0] != 'H' || value[1] != 'E') {
                throw new Unopenable("crypto.envelope_invalid");
            }
            if (value[2] != 1) {
                throw new Unopenable("crypto.envelope_invalid"); // a version this reader does not know
            }
            int length = value[3] & 0xff;
            int body = 4 + length;
            if (length == 0 || value.length < body + NONCE_BYTES + TAG_BITS / 8) {
                throw new Unopenable("crypto.envelope_invalid");
            }
            String keyId;
            try {
                keyId = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .decode(ByteBuffer.wrap(value, 4, length))
                        .toString();
            } catch (CharacterCodingException e) {
                throw new Unopenable("crypto.envelope_invalid");
            }
            return new Envelope(
                    keyId,
                    Arrays.copyOfRange(value, body, body + NONCE_BYTES),
                    Arrays.copyOfRange(value, body + NONCE_BYTES, value.length));
        }
    }

    /** The scheme, the key id, the topic and the record id, each as a 4-byte big-endian length and UTF-8. */
    static byte[] associatedData(String keyId, String topic, String recordId) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (String part : new String[] {SCHEME, keyId, topic, recordId}) {
            byte[] bytes = part.getBytes(StandardCharsets.UTF_8);
            out.writeBytes(ByteBuffer.allocate(4).putInt(bytes.length).array());
            out.writeBytes(bytes);
        }
        return out.toByteArray();
    }

    /** The plaintext; AEADBadTagException when the bytes, the key or their context are not the sealed ones. */
    static byte[] open(byte[] key, Envelope envelope, String topic, String recordId) throws GeneralSecurityException {
        Cipher cipher = Cipher.getInstance("AES/GCM/NoPadding");
        cipher.init(Cipher.DECRYPT_MODE, new SecretKeySpec(key, "AES"), new GCMParameterSpec(TAG_BITS, envelope.nonce()));
        cipher.updateAAD(associatedData(envelope.keyId(), topic, recordId));
        return cipher.doFinal(envelope.ciphertextAndTag());
    }

    // --- the key service (docs/SECURITY.md, "Recipient key access") ---------------------------------

    /** Released keys (or refusals), kept no longer than the service's cache_seconds say. */
    static final class KeyClient {
        /** A refusal (403, 410) is remembered this long, so a patient's many records cost one request. */
        static final long REFUSAL_SECONDS = 60;
        static final int MAX_KEYS = 10_000;
        static final int ATTEMPTS = 8;

        record Entry(byte[] key, String refusal, long expiresAtNanos) {}

        final HttpClient http;
        final String baseUrl;
        final String token;
        final Map<String, Entry> cache = new LinkedHashMap<>(16, 0.75f, true) {
            @Override
            protected boolean removeEldestEntry(Map.Entry<String, Entry> eldest) {
                return size() > MAX_KEYS;
            }
        };

        KeyClient(String baseUrl, String token, SSLContext tls) {
            this.http = HttpClient.newBuilder()
                    .version(HttpClient.Version.HTTP_1_1)
                    .sslContext(tls)
                    .connectTimeout(Duration.ofSeconds(10))
                    .build();
            this.baseUrl = baseUrl.replaceAll("/+$", "");
            this.token = token;
        }

        byte[] key(String keyId) throws Unopenable, InterruptedException {
            Entry entry = cache.get(keyId);
            if (entry == null || System.nanoTime() - entry.expiresAtNanos() > 0) {
                entry = fetch(keyId);
                cache.put(keyId, entry);
            }
            if (entry.key() == null) {
                throw new Unopenable(entry.refusal());
            }
            return entry.key();
        }

        Entry fetch(String keyId) throws InterruptedException {
            HttpRequest request = HttpRequest.newBuilder(
                            URI.create(baseUrl + "/v1/keys/" + URLEncoder.encode(keyId, StandardCharsets.UTF_8)))
                    .header("Authorization", "Bearer " + token)
                    .timeout(Duration.ofSeconds(15))
                    .GET()
                    .build();
            long pause = 1;
            for (int attempt = 1; ; attempt++) {
                HttpResponse<String> response;
                try {
                    response = http.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
                } catch (IOException e) {
                    if (attempt == ATTEMPTS) {
                        throw new Fatal(EXIT_UNAVAILABLE, "the key service does not answer: " + e);
                    }
                    Thread.sleep(pause * 1000);
                    pause = Math.min(pause * 2, 30);
                    continue;
                }
                int status = response.statusCode();
                if (status == 200) {
                    Map<?, ?> body = (Map<?, ?>) Json.parse(response.body());
                    byte[] key = Base64.getDecoder().decode((String) body.get("key_material"));
                    long seconds = ((Number) body.get("cache_seconds")).longValue();
                    return new Entry(key, null, System.nanoTime() + Duration.ofSeconds(seconds).toNanos());
                }
                if (status == 401) {
                    throw new Fatal(EXIT_CREDENTIAL, "the key service refuses this credential (401): ask the hub for a new one");
                }
                if (status == 400 || status == 403 || status == 410) {
                    String code = (String) ((Map<?, ?>) Json.parse(response.body())).get("error");
                    return new Entry(null, code, System.nanoTime() + Duration.ofSeconds(REFUSAL_SECONDS).toNanos());
                }
                // 429 (rate limited) and 503 (the hub cannot audit now) say when to come back.
                if (attempt == ATTEMPTS) {
                    throw new Fatal(EXIT_UNAVAILABLE, "the key service keeps answering " + status);
                }
                long wait = response.headers().firstValue("Retry-After").map(Long::parseLong).orElse(pause);
                Thread.sleep(Math.max(1, wait) * 1000);
                pause = Math.min(pause * 2, 30);
            }
        }
    }

    static SSLContext trusting(Path caFile) throws IOException, GeneralSecurityException {
        KeyStore trusted = KeyStore.getInstance(KeyStore.getDefaultType());
        trusted.load(null, null);
        try (InputStream in = Files.newInputStream(caFile)) {
            Collection<? extends Certificate> certificates = CertificateFactory.getInstance("X.509").generateCertificates(in);
            int index = 0;
            for (Certificate certificate : certificates) {
                trusted.setCertificateEntry("ca-" + index++, certificate);
            }
        }
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(trusted);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, factory.getTrustManagers(), null);
        return context;
    }

    // --- the consumer ------------------------------------------------------------------------------

    static String header(ConsumerRecord<byte[], byte[]> record, String name) {
        Header last = record.headers().lastHeader(name);
        return last == null ? null : new String(last.value(), StandardCharsets.UTF_8);
    }

    /** The plaintext of one record of the recipient's topic. */
    static byte[] openRecord(ConsumerRecord<byte[], byte[]> record, KeyClient keys) throws Unopenable, InterruptedException {
        if (!SCHEME.equals(header(record, "hub-enc"))) {
            throw new Unopenable("crypto.envelope_invalid");
        }
        Envelope envelope = Envelope.parse(record.value());
        String recordId = header(record, "hub-record-id");
        if (recordId == null || !envelope.keyId().equals(header(record, "hub-key-id"))) {
            throw new Unopenable("crypto.envelope_invalid");
        }
        try {
            return open(keys.key(envelope.keyId()), envelope, record.topic(), recordId);
        } catch (AEADBadTagException e) {
            throw new Unopenable("crypto.decrypt_failed");
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("this JDK has no AES-GCM", e);
        }
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        if (value != null && !value.isBlank()) {
            return value.strip();
        }
        if (fallback == null) {
            throw new Fatal(EXIT_CONFIG, "set " + name + " (see the comment at the top of HubConsumer.java)");
        }
        return fallback;
    }

    static String readSecret(String variable) throws IOException {
        return Files.readString(Path.of(env(variable, null)), StandardCharsets.UTF_8).strip();
    }

    static Properties kafkaSettings() throws IOException {
        Properties settings = new Properties();
        settings.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, env("KAFKA_BOOTSTRAP_SERVERS", null));
        settings.put(ConsumerConfig.GROUP_ID_CONFIG, env("KAFKA_GROUP_ID", null));
        settings.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        settings.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        settings.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        // Offsets are committed only once a batch is written out: a crash re-reads, never skips.
        settings.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        String protocol = env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT");
        settings.put("security.protocol", protocol);
        if (protocol.equals("SASL_SSL")) {
            settings.put("sasl.mechanism", "SCRAM-SHA-512");
            String password = readSecret("KAFKA_SASL_PASSWORD_FILE").replace("\\", "\\\\").replace("\"", "\\\"");
            settings.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required username=\""
                    + env("KAFKA_SASL_USERNAME", null) + "\" password=\"" + password + "\";");
            settings.put("ssl.truststore.type", "PEM");
            settings.put("ssl.truststore.location", env("KAFKA_SSL_CA_FILE", null));
        }
        return settings;
    }

    static void consume(Duration idleExit) throws IOException, GeneralSecurityException, InterruptedException {
        String topic = env("KAFKA_TOPIC", null);
        KeyClient keys = new KeyClient(
                env("KEY_SERVICE_URL", null), readSecret("KEY_SERVICE_TOKEN_FILE"), trusting(Path.of(env("KEY_SERVICE_CA_FILE", null))));
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(kafkaSettings())) {
            // The idle clock starts once partitions are assigned: joining the group takes seconds.
            long[] quietSince = {0};
            boolean[] assigned = {false};
            consumer.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                @Override
                public void onPartitionsRevoked(Collection<TopicPartition> partitions) {}

                @Override
                public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                    assigned[0] = true;
                    quietSince[0] = System.nanoTime();
                }
            });
            while (idleExit == null || !assigned[0] || System.nanoTime() - quietSince[0] < idleExit.toNanos()) {
                ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> record : records) {
                    quietSince[0] = System.nanoTime();
                    String where = record.topic() + "/" + record.partition() + "/" + record.offset();
                    try {
                        byte[] event = openRecord(record, keys);
                        String key = record.key() == null ? null : new String(record.key(), StandardCharsets.UTF_8);
                        System.out.println("{\"topic\":" + Json.quote(record.topic()) + ",\"partition\":" + record.partition()
                                + ",\"offset\":" + record.offset() + ",\"key\":" + Json.quote(key) + ",\"event\":"
                                + new String(event, StandardCharsets.UTF_8) + "}");
                    } catch (Unopenable e) {
                        // Not ours to read, or erased (crypto.key_destroyed): skip it, say which and why.
                        System.err.println("skipped " + where + ": " + e.code);
                    }
                }
                if (!records.isEmpty()) {
                    System.out.flush();
                    consumer.commitSync();
                }
            }
        }
    }

    // --- the published test vectors ------------------------------------------------------------------

    static int checkVectors(Path file) throws IOException {
        Map<?, ?> document = (Map<?, ?>) Json.parse(Files.readString(file, StandardCharsets.UTF_8));
        HexFormat hex = HexFormat.of();
        int failed = 0;
        List<?> vectors = (List<?>) document.get("vectors");
        for (Object item : vectors) {
            Map<?, ?> vector = (Map<?, ?>) item;
            Map<?, ?> headers = (Map<?, ?>) vector.get("headers");
            String name = (String) vector.get("name");
            String topic = (String) vector.get("topic");
            String recordId = (String) headers.get("hub-record-id");
            boolean opens = (Boolean) vector.get("opens");
            String problem = null;
            try {
                Envelope envelope = Envelope.parse(hex.parseHex((String) vector.get("value")));
                Map<?, ?> parts = (Map<?, ?>) vector.get("parts");
                if (!envelope.keyId().equals(headers.get("hub-key-id"))) {
                    problem = "the key id differs from hub-key-id";
                } else if (!hex.formatHex(envelope.nonce()).equals(parts.get("nonce"))) {
                    problem = "the nonce differs";
                } else if (!hex.formatHex(associatedData(envelope.keyId(), topic, recordId)).equals(vector.get("associated_data"))) {
                    problem = "the associated data differs";
                } else {
                    byte[] plain = open(hex.parseHex((String) vector.get("key")), envelope, topic, recordId);
                    if (!opens) {
                        problem = "opened, but must not";
                    } else if (!new String(plain, StandardCharsets.UTF_8).equals(vector.get("plaintext"))) {
                        problem = "the plaintext differs";
                    }
                }
            } catch (AEADBadTagException e) {
                problem = opens ? "does not authenticate" : null;
            } catch (Unopenable | GeneralSecurityException e) {
                problem = e.toString();
            }
            System.out.println((problem == null ? "ok     " : "FAILED ") + name + (problem == null ? "" : ": " + problem));
            failed += problem == null ? 0 : 1;
        }
        System.out.println(failed == 0 ? vectors.size() + " vectors passed" : failed + " of " + vectors.size() + " vectors failed");
        return failed == 0 ? 0 : EXIT_VECTORS;
    }

    public static void main(String[] args) throws Exception {
        // kafka-clients logs through slf4j: warnings and errors only, on stderr.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        try {
            if (args.length == 2 && args[0].equals("--check-vectors")) {
                System.exit(checkVectors(Path.of(args[1])));
            }
            Duration idleExit = null;
            if (args.length == 2 && args[0].equals("--idle-exit")) {
                idleExit = Duration.ofSeconds(Long.parseLong(args[1]));
            } else if (args.length != 0) {
                throw new Fatal(EXIT_CONFIG, "usage: HubConsumer [--idle-exit SECONDS | --check-vectors FILE]");
            }
            consume(idleExit);
        } catch (Fatal e) {
            System.err.println("error: " + e.getMessage());
            System.exit(e.exitCode);
        }
    }

    // --- a small JSON reader: the key service's answers and the vectors file ---------------------------

    static final class Json {
        private final String text;
        private int at;

        private Json(String text) {
            this.text = text;
        }

        static Object parse(String text) {
            Json reader = new Json(text);
            Object value = reader.value();
            reader.space();
            if (reader.at != text.length()) {
                throw reader.error("trailing text");
            }
            return value;
        }

        static String quote(String value) {
            if (value == null) {
                return "null";
            }
            StringBuilder out = new StringBuilder("\"");
            for (char c : value.toCharArray()) {
                switch (c) {
                    case '"' -> out.append("\\\"");
                    case '\\' -> out.append("\\\\");
                    case '\n' -> out.append("\\n");
                    case '\r' -> out.append("\\r");
                    case '\t' -> out.append("\\t");
                    default -> out.append(c < 0x20 ? String.format("\\u%04x", (int) c) : String.valueOf(c));
                }
            }
            return out.append('"').toString();
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("not JSON: " + what + " at character " + at);
        }

        private void space() {
            while (at < text.length() && Character.isWhitespace(text.charAt(at))) {
                at++;
            }
        }

        private Object value() {
            space();
            if (at >= text.length()) {
                throw error("unexpected end");
            }
            char c = text.charAt(at);
            if (c == '{') {
                Map<String, Object> object = new LinkedHashMap<>();
                at++;
                space();
                if (text.charAt(at) == '}') {
                    at++;
                    return object;
                }
                while (true) {
                    space();
                    String key = string();
                    space();
                    expect(':');
                    object.put(key, value());
                    space();
                    if (text.charAt(at) == ',') {
                        at++;
                    } else {
                        expect('}');
                        return object;
                    }
                }
            }
            if (c == '[') {
                List<Object> array = new ArrayList<>();
                at++;
                space();
                if (text.charAt(at) == ']') {
                    at++;
                    return array;
                }
                while (true) {
                    array.add(value());
                    space();
                    if (text.charAt(at) == ',') {
                        at++;
                    } else {
                        expect(']');
                        return array;
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            for (String word : new String[] {"true", "false", "null"}) {
                if (text.startsWith(word, at)) {
                    at += word.length();
                    return word.equals("null") ? null : Boolean.valueOf(word);
                }
            }
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
            if (start == at) {
                throw error("unexpected '" + c + "'");
            }
            return Double.valueOf(text.substring(start, at));
        }

        private void expect(char c) {
            if (at >= text.length() || text.charAt(at) != c) {
                throw error("expected '" + c + "'");
            }
            at++;
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (true) {
                if (at >= text.length()) {
                    throw error("unterminated string");
                }
                char c = text.charAt(at++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char escaped = text.charAt(at++);
                switch (escaped) {
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> {
                        out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                        at += 4;
                    }
                    default -> out.append(escaped);
                }
            }
        }
    }
}
