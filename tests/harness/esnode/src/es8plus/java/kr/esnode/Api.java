package kr.esnode;

import java.util.List;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.env.Environment;
import org.elasticsearch.http.HttpServerTransport;
import org.elasticsearch.node.EmbeddedNode;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.TransportService;
import org.elasticsearch.transport.netty4.Netty4Plugin;

/** What starting a node needs that differs between ES 7.x and 8.x/9.x: this is the 8.x/9.x side. */
final class Api {

    private Api() {}

    /** Installs ES's LoggerFactory (org.elasticsearch.logging) on top of log4j-core; the bootstrap normally does this. */
    static void configureLogging() {
        LogConfigurator.configureESLogging();
    }

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
