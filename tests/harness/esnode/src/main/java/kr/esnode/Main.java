package kr.esnode;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.node.EmbeddedNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

/**
 * Starts one embedded Elasticsearch node for kibana-rollback's tests.
 *
 * Usage: Main [--dir DIR] [--port PORT]
 *   DIR  : the node's state dir (env KR_ES_DIR; required). Layout: home/, data/, logs/, repo/ (= path.repo),
 *          node.pid, http.port (written once HTTP is bound).
 *   PORT : HTTP port on 127.0.0.1 (env ES_PORT; default 9250).
 */
public final class Main {

    public static void main(String[] args) throws Exception {
        String dir = System.getenv("KR_ES_DIR");
        String port = System.getenv().getOrDefault("ES_PORT", "9250");
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--dir" -> dir = args[++i];
                case "--port" -> port = args[++i];
                default -> {
                    System.err.println("unknown argument: " + args[i]);
                    System.exit(2);
                }
            }
        }
        if (dir == null || dir.isEmpty()) {
            System.err.println("state dir required: --dir DIR or KR_ES_DIR");
            System.exit(2);
        }
        Path base = Path.of(dir).toAbsolutePath().normalize();
        Path home = base.resolve("home");
        Path data = base.resolve("data");
        Path logs = base.resolve("logs");
        Path repo = base.resolve("repo");
        for (Path p : List.of(home, data, logs, repo, repo.resolve("fs"))) {
            Files.createDirectories(p);
        }
        writeAtomically(base.resolve("node.pid"), Long.toString(ProcessHandle.current().pid()));

        int processors = Math.min(2, Runtime.getRuntime().availableProcessors());
        Settings settings = Settings.builder()
            .put("cluster.name", "kr-test")
            .put("node.name", "kr-test-0")
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", logs.toString())
            .putList("path.repo", repo.toString())
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", "0")
            .put("node.processors", processors)
            .put("indices.breaker.total.use_real_memory", false)
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();

        // Installs ES's LoggerFactory (org.elasticsearch.logging) on top of log4j-core; the bootstrap normally does this.
        LogConfigurator.configureESLogging();
        Environment env = new Environment(settings, null);
        Node node = new EmbeddedNode(env, List.of(Netty4Plugin.class, KibanaTestPlugin.class));
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
        int boundPort = node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress().getPort();
        writeAtomically(base.resolve("http.port"), Integer.toString(boundPort));
        System.out.println("READY http://127.0.0.1:" + boundPort);
        System.out.flush();
        stopped.await();
    }

    private static void writeAtomically(Path target, String content) throws IOException {
        Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
        Files.writeString(tmp, content + "\n", StandardCharsets.UTF_8);
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    }
}
