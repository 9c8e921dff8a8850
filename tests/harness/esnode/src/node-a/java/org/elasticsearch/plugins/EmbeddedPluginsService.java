package org.elasticsearch.plugins;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;

import org.elasticsearch.Version;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.jdk.ModuleQualifiedExportsService;

/**
 * A {@link PluginsService} that loads the given plugin classes from the application classpath and scans no
 * directories; the Elasticsearch 8.0 to 8.17 variant. It lives in org.elasticsearch.plugins because LoadedPlugin,
 * loadPlugin and loadExtensions are package-private. Test-only code.
 */
public class EmbeddedPluginsService extends PluginsService {

    private final List<LoadedPlugin> classpathPlugins;

    public EmbeddedPluginsService(Settings settings, Environment environment, Collection<Class<? extends Plugin>> classes) {
        super(settings, environment.configFile(), null, null);
        List<LoadedPlugin> loaded = new ArrayList<>();
        for (Class<? extends Plugin> cls : classes) {
            Plugin plugin = loadPlugin(cls, settings, environment.configFile());
            PluginDescriptor descriptor = new PluginDescriptor(
                cls.getName(),
                "classpath plugin",
                "NA",
                Version.CURRENT.toString(),
                Integer.toString(Runtime.version().feature()),
                cls.getName(),
                null,
                List.of(),
                false,
                false,
                false,
                false
            );
            loaded.add(new LoadedPlugin(descriptor, plugin, Thread.currentThread().getContextClassLoader(), ModuleLayer.boot()));
        }
        loadExtensions(loaded);
        this.classpathPlugins = List.copyOf(loaded);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return classpathPlugins;
    }

    @Override
    protected void addServerExportsService(Map<String, List<ModuleQualifiedExportsService>> qualifiedExports) {
        // The server is on the classpath (unnamed module), not a module layer: nothing to export.
    }
}
