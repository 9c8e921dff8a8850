package kr.esnode;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.Node;

/**
 * Starts one embedded Elasticsearch node for kibana-rollback's tests (any supported version: the version-specific
 * parts are behind {@link Api}, compiled from the source set of the version's API line).
 *
 * Usage: Main --dir DIR [--repo DIR] [--port PORT] [--transport-port PORT] [--cluster-name NAME] [--node-name NAME]
 *             [--seeds HOST:PORT,...] [--initial-masters NAME,...] [--processors N]
 *   --dir        the node's state dir (env KR_ES_DIR; required). Layout: home/, data/, logs/, node.pid,
 *                http.port and transport.port (both written once the node has started).
 *   --repo       path.repo (default DIR/repo); nodes of one cluster share it.
 *   --port       HTTP port on 127.0.0.1 (env ES_PORT; default 9250; 0 = any free port).
 *   --transport-port  transport port (default 0 = any free port).
 *   --seeds / --initial-masters  form or join a multi-node cluster: discovery.seed_hosts (only these, never the
 *                default 9300-9305 scan, so nodes of other clusters on this machine are never contacted) and
 *                cluster.initial_master_nodes (only when bootstrapping a new cluster). With neither: single-node.
 */
public final class Main {

    public static void main(String[] args) throws Exception {
        String dir = System.getenv("KR_ES_DIR");
        String port = System.getenv().getOrDefault("ES_PORT", "9250");
        String transportPort = "0";
        String repoDir = null;
        String clusterName = "kr-test";
        String nodeName = "kr-test-0";
        String seeds = null;
        String initialMasters = null;
        int processors = Math.min(2, Runtime.getRuntime().availableProcessors());
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + a);
            }
            String v = args[++i];
            switch (a) {
                case "--dir" -> dir = v;
                case "--repo" -> repoDir = v;
                case "--port" -> port = v;
                case "--transport-port" -> transportPort = v;
                case "--cluster-name" -> clusterName = v;
                case "--node-name" -> nodeName = v;
                case "--seeds" -> seeds = v;
                case "--initial-masters" -> initialMasters = v;
                case "--processors" -> processors = Integer.parseInt(v);
                default -> usage("unknown argument: " + a);
            }
        }
        if (dir == null || dir.isEmpty()) {
            usage("state dir required: --dir DIR or KR_ES_DIR");
        }
        Path base = Path.of(dir).toAbsolutePath().normalize();
        Path home = base.resolve("home");
        Path data = base.resolve("data");
        Path logs = base.resolve("logs");
        Path repo = repoDir == null ? base.resolve("repo") : Path.of(repoDir).toAbsolutePath().normalize();
        for (Path p : List.of(home, data, logs, repo, repo.resolve("fs"))) {
            Files.createDirectories(p);
        }
        writeAtomically(base.resolve("node.pid"), Long.toString(ProcessHandle.current().pid()));

        Settings.Builder settings = Settings.builder()
            .put("cluster.name", clusterName)
            .put("node.name", nodeName)
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", logs.toString())
            .putList("path.repo", repo.toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", transportPort)
            .put("node.processors", processors)
            .put("indices.breaker.total.use_real_memory", false)
            .put("cluster.routing.allocation.disk.threshold_enabled", false);
        if (seeds == null && initialMasters == null) {
            settings.put("discovery.type", "single-node");
        } else {
            settings.putList("discovery.seed_hosts", list(seeds));
            if (initialMasters != null) {
                settings.putList("cluster.initial_master_nodes", list(initialMasters));
            }
        }

        Api.configureLogging();
        Environment env = new Environment(settings.build(), null);
        Node node = Api.newNode(env);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (IOException | RuntimeException e) {
                System.err.println("error while closing node: " + e);
            } finally {
                stopped.countDown();
            }
        }, "kr-es-shutdown"));

        try {
            node.start();
        } catch (Throwable t) {
            // Non-daemon ES threads could keep a half-started JVM alive: exit so the harness sees the failure.
            System.err.println("node failed to start: " + t);
            t.printStackTrace();
            System.exit(1);
        }
        writeAtomically(base.resolve("transport.port"), Integer.toString(Api.transportPort(node)));
        int boundPort = Api.httpPort(node);
        writeAtomically(base.resolve("http.port"), Integer.toString(boundPort));
        System.out.println("READY http://127.0.0.1:" + boundPort);
        System.out.flush();
        stopped.await();
    }

    private static List<String> list(String commaSeparated) {
        List<String> out = new ArrayList<>();
        if (commaSeparated != null) {
            for (String s : Arrays.asList(commaSeparated.split(","))) {
                if (!s.isBlank()) {
                    out.add(s.trim());
                }
            }
        }
        return out;
    }

    private static void usage(String message) {
        System.err.println(message);
        System.exit(2);
    }

    private static void writeAtomically(Path target, String content) throws IOException {
        Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
        Files.writeString(tmp, content + "\n", StandardCharsets.UTF_8);
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    }
}
