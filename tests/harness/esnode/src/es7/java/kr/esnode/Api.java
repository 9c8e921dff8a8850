package kr.esnode;

import java.util.List;

import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.node.EmbeddedNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.Netty4Plugin;
import org.elasticsearch.transport.TransportService;

/** What starting a node needs that differs between ES 7.x and 8.x/9.x: this is the 7.17 side. */
final class Api {

    private Api() {}

    /** Nothing to install: 7.x logs through log4j directly, configured by the log4j2.properties on the classpath. */
    static void configureLogging() {}

    static Node newNode(Environment env) {
        return new EmbeddedNode(env, List.of(Netty4Plugin.class, KibanaTestPlugin.class));
    }

    static int httpPort(Node node) {
        return node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress().getPort();
    }

    static int transportPort(Node node) {
        return node.injector().getInstance(TransportService.class).boundAddress().publishAddress().getPort();
    }
}
