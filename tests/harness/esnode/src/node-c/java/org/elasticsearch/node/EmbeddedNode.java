package org.elasticsearch.node;

import java.util.Collection;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.Plugin;

/**
 * A {@link Node} whose plugins come from the classpath; the Elasticsearch 7.17 variant, where Node's protected
 * constructor takes the classpath plugins itself (no NodeConstruction, no custom PluginsService). Test-only code.
 */
public class EmbeddedNode extends Node {

    public EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(environment, classpathPlugins, true);
    }

    @Override
    protected void configureNodeAndClusterIdStateListener(ClusterService clusterService) {
        // Only one node per JVM here; the default sets process-wide log4j state, which is harmless but unneeded.
    }
}
