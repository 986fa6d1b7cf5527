// Readiness probe for the local broker started by deploy/local/stack.
//
//   java -cp "$HOOKSTREAM_CACHE_DIR/*:$HOOKSTREAM_CACHE_DIR/probe" KafkaProbe 127.0.0.1:9092 20000
//
// Succeeds (exit 0) once a real Kafka client can describe the cluster and
// list its topics: the same thing `kafka-topics.sh --list` checks, without
// kafka-tools (org.apache.kafka:kafka-tools is not on Maven Central for every
// broker release). Prints "cluster=<id> brokers=<n> topics=<n>" on stdout;
// on failure prints the reason on stderr and exits 1.
//
// deploy/local/stack compiles this once into the jar cache (javac -d .../probe).

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;

public final class KafkaProbe {
    private KafkaProbe() {}

    public static void main(String[] args) {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: KafkaProbe BOOTSTRAP [TIMEOUT_MS]");
            System.exit(2);
        }
        String bootstrap = args[0];
        int timeoutMs = args.length == 2 ? Integer.parseInt(args[1]) : 10000;

        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.CLIENT_ID_CONFIG, "hookstream-stack-probe");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.min(timeoutMs, 5000));
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 100);
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);

        int status = 1;
        Admin admin = null;
        try {
            admin = Admin.create(props);
            DescribeClusterResult cluster = admin.describeCluster();
            String clusterId = cluster.clusterId().get(timeoutMs, TimeUnit.MILLISECONDS);
            int brokers = cluster.nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                    .names().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            if (brokers < 1) {
                throw new IllegalStateException("cluster reports no live broker");
            }
            System.out.println("cluster=" + clusterId + " brokers=" + brokers + " topics=" + topics);
            status = 0;
        } catch (Exception e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            System.err.println("kafka probe: " + bootstrap + ": " + cause);
        } finally {
            // A plain close() waits for in-flight calls to time out; don't.
            if (admin != null) {
                admin.close(Duration.ofMillis(200));
            }
        }
        System.exit(status);
    }
}
