// An outside subscriber, as a Java team would write one: the official Kafka consumer,
// read_committed, byte-array deserializers. Prints every record of the named topics from
// the beginning up to the last stable offset, one line each:
// REC <tab> topic <tab> partition <tab> offset <tab> key hex or - <tab> value hex or -
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class TopicDump {
    public static void main(String[] args) {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("isolation.level", "read_committed");
        props.put("enable.auto.commit", "false");
        props.put("key.deserializer", ByteArrayDeserializer.class.getName());
        props.put("value.deserializer", ByteArrayDeserializer.class.getName());
        HexFormat hex = HexFormat.of();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            for (int i = 1; i < args.length; i++) {
                String topic = args[i];
                List<TopicPartition> parts = new ArrayList<>();
                for (PartitionInfo info : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                    parts.add(new TopicPartition(topic, info.partition()));
                }
                consumer.assign(parts);
                consumer.seekToBeginning(parts);
                Map<TopicPartition, Long> end = consumer.endOffsets(parts, Duration.ofSeconds(30));
                long deadline = System.currentTimeMillis() + 120_000;
                while (!caughtUp(consumer, parts, end)) {
                    if (System.currentTimeMillis() > deadline) {
                        throw new IllegalStateException("timed out reading " + topic);
                    }
                    for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                        System.out.println("REC\t" + r.topic() + "\t" + r.partition() + "\t" + r.offset()
                                + "\t" + (r.key() == null ? "-" : hex.formatHex(r.key()))
                                + "\t" + (r.value() == null ? "-" : hex.formatHex(r.value())));
                    }
                }
            }
        }
        System.out.flush();
    }

    private static boolean caughtUp(
            KafkaConsumer<byte[], byte[]> consumer, List<TopicPartition> parts, Map<TopicPartition, Long> end) {
        for (TopicPartition tp : parts) {
            if (consumer.position(tp, Duration.ofSeconds(30)) < end.get(tp)) {
                return false;
            }
        }
        return true;
    }
}
