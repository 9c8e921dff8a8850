package org.elasticsearch.node;

import java.util.Collection;
import java.util.Map;
import java.util.Set;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.EmbeddedPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;

/**
 * A {@link Node} whose plugins come from the classpath instead of the modules/ and plugins/ directories; the
 * Elasticsearch 8.18+ and 9.x variant (construction takes a PluginsLoader). It lives in org.elasticsearch.node
 * because NodeConstruction.prepareConstruction, NodeServiceProvider and Node(NodeConstruction) are package-private.
 * Test-only code.
 */
public class EmbeddedNode extends Node {

    public EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        super(NodeConstruction.prepareConstruction(
            environment,
            // No module or plugin bundles on disk: every plugin is a classpath class.
            PluginsLoader.createPluginsLoader(Set.of(), Set.of(), Map.of(), false),
            new NodeServiceProvider() {
                @Override
                PluginsService newPluginService(Environment env, PluginsLoader pluginsLoader) {
                    return new EmbeddedPluginsService(env.settings(), env, pluginsLoader, classpathPlugins);
                }
            },
            true));
    }

    @Override
    protected void configureNodeAndClusterIdStateListener(ClusterService clusterService) {
        // Only one node per JVM here; the default sets process-wide log4j state, which is harmless but unneeded.
    }
}
