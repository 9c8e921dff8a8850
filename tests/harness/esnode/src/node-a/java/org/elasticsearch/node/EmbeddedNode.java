package org.elasticsearch.node;

import java.util.Collection;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.EmbeddedPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsService;

/**
 * A {@link Node} whose plugins come from the classpath instead of the modules/ and plugins/ directories; the
 * Elasticsearch 8.0 to 8.17 variant.
 *
 * It lives in org.elasticsearch.node because NodeConstruction.prepareConstruction, NodeServiceProvider and
 * Node(NodeConstruction) are package-private. Test-only code.
 */
public class EmbeddedNode extends Node {

    public EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(NodeConstruction.prepareConstruction(environment, new NodeServiceProvider() {
            @Override
            PluginsService newPluginService(Environment env, Settings settings) {
                return new EmbeddedPluginsService(settings, env, classpathPlugins);
            }
        }, true));
    }

    @Override
    protected void configureNodeAndClusterIdStateListener(ClusterService clusterService) {
        // Only one node per JVM here; the default sets process-wide log4j state, which is harmless but unneeded.
    }
}
