/*
 * The local stack's OpenSearch 2.19 node, in-process, run as a single source file:
 *
 *   java -Xms512m -Xmx1g -cp 'LIB/*' Launcher.java \
 *       --home DIR --http-port P --transport-port T [--cluster-name NAME]
 *
 * LIB is the directory of jars pom.xml resolves.  DIR holds config/ (a log4j2.properties
 * written here), data/, logs/ and tmp/; data survives a restart (and a kill -9: the
 * translog is fsynced per request, OpenSearch's default durability).  One node,
 * discovery.type=single-node, HTTP and transport on 127.0.0.1 only, no security plugin.
 * The plugins are those of pom.xml, handed to the node as classpath plugins.
 *
 * SIGTERM (or SIGINT) closes the node in a shutdown hook and the JVM exits 0.  A start-up
 * failure prints one line "opensearch launcher: ..." and exits 1 (the port taken, a bad
 * data directory, ...).
 */

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.join.ParentJoinPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

public final class Launcher {

    static final List<Class<? extends Plugin>> PLUGINS = List.of(
        Netty4Plugin.class,
        MapperExtrasPlugin.class,
        CommonAnalysisPlugin.class,
        PainlessPlugin.class,
        ReindexPlugin.class,
        ParentJoinPlugin.class);

    static final String LOG4J2 = String.join("\n",
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
        "rootLogger.level = info",
        "rootLogger.appenderRef.console.ref = console",
        "logger.deprecation.name = org.opensearch.deprecation",
        "logger.deprecation.level = error",
        "");

    /** A node with classpath plugins: Node's protected constructor is the way in. */
    static final class LocalNode extends Node {
        LocalNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    public static void main(String[] args) {
        Map<String, String> opts = parse(args);
        Node node;
        try {
            node = start(opts);
        } catch (Throwable exc) {
            fail("failed to start: " + describe(exc), exc);
            return;
        }
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(20, TimeUnit.SECONDS)) {
                    System.out.println("opensearch launcher: node did not close within 20s");
                }
                System.out.println("opensearch launcher: stopped");
            } catch (Exception exc) {
                System.out.println("opensearch launcher: error while stopping: " + describe(exc));
            } finally {
                System.out.flush();
                stopped.countDown();
            }
        }, "opensearch-launcher-shutdown"));
        System.out.println("opensearch launcher: started http=127.0.0.1:" + opts.get("http-port")
            + " transport=127.0.0.1:" + opts.get("transport-port"));
        System.out.flush();
        try {
            stopped.await();
        } catch (InterruptedException exc) {
            Thread.currentThread().interrupt();
        }
    }

    static Node start(Map<String, String> opts) throws Exception {
        Path home = Path.of(require(opts, "home")).toAbsolutePath();
        Path config = home.resolve("config");
        Path data = home.resolve("data");
        Path logs = home.resolve("logs");
        for (Path dir : List.of(config, data, logs, home.resolve("plugins"), home.resolve("modules"))) {
            Files.createDirectories(dir);
        }
        Files.writeString(config.resolve("log4j2.properties"), LOG4J2, StandardCharsets.UTF_8);
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", logs.toString())
            .put("cluster.name", opts.getOrDefault("cluster-name", "catalog-cdc"))
            .put("node.name", "catalog-cdc-local")
            .put("network.host", "127.0.0.1")
            .put("http.port", require(opts, "http-port"))
            .put("transport.port", require(opts, "transport-port"))
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            .put("discovery.type", "single-node")
            // A local stack on a nearly full disk must not turn the indices read-only.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), config, () -> "catalog-cdc-local");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("catalog-cdc-local");
        LogConfigurator.configure(environment);
        Node node = new LocalNode(environment, PLUGINS);
        node.start();
        return node;
    }

    static Map<String, String> parse(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                fail("usage: Launcher.java --home DIR --http-port P --transport-port T"
                    + " [--cluster-name NAME] (bad argument " + args[i] + ")", null);
            }
            out.put(args[i].substring(2), args[++i]);
        }
        return out;
    }

    static String require(Map<String, String> opts, String key) {
        String value = opts.get(key);
        if (value == null) {
            fail("missing --" + key, null);
        }
        return value;
    }

    /** The innermost cause's class and message: what an operator can act on. */
    static String describe(Throwable exc) {
        Throwable root = exc;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String top = exc.getClass().getSimpleName() + ": " + exc.getMessage();
        if (root == exc) {
            return top;
        }
        return top + " (caused by " + root.getClass().getSimpleName() + ": " + root.getMessage() + ")";
    }

    static void fail(String message, Throwable exc) {
        if (exc != null) {
            exc.printStackTrace(System.out);
        }
        // Last, so that it is the log's last line (what the stack's error message shows).
        System.out.println("opensearch launcher: " + message.replace('\n', ' '));
        System.out.flush();
        Runtime.getRuntime().halt(1);
    }

    private Launcher() {}
}
