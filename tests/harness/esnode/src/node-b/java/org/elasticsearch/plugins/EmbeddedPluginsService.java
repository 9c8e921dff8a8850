package org.elasticsearch.plugins;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import org.elasticsearch.Version;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;

/**
 * A {@link PluginsService} that loads the given plugin classes from the application classpath and scans no
 * directories; the Elasticsearch 8.18+ and 9.x variant (PluginsLoader, Environment.configDir(), a 3-part
 * LoadedPlugin, no server exports to add). It lives in org.elasticsearch.plugins because LoadedPlugin,
 * loadPlugin and loadExtensions are package-private. Test-only code.
 */
public class EmbeddedPluginsService extends PluginsService {

    private final List<LoadedPlugin> classpathPlugins;

    public EmbeddedPluginsService(Settings settings, Environment environment, PluginsLoader loader,
                                  Collection<Class<? extends Plugin>> classes) {
        super(settings, environment.configDir(), loader);
        List<LoadedPlugin> loaded = new ArrayList<>();
        for (Class<? extends Plugin> cls : classes) {
            Plugin plugin = loadPlugin(cls, settings, environment.configDir());
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
            loaded.add(new LoadedPlugin(descriptor, plugin, Thread.currentThread().getContextClassLoader()));
        }
        loadExtensions(loaded);
        this.classpathPlugins = List.copyOf(loaded);
    }

    @Override
    protected List<LoadedPlugin> plugins() {
        return classpathPlugins;
    }
}
