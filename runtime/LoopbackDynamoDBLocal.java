import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;

/**
 * Starts DynamoDB Local listening on 127.0.0.1 only.
 *
 * <p>DynamoDB Local has no bind-address option: its Jetty connector listens on every interface
 * and the server accepts any credentials, so anyone who can reach the machine could rewrite the
 * ledger. This launcher builds the server exactly as {@code ServerRunner.main} does, sets host
 * 127.0.0.1 on every Jetty connector before starting it, and refuses to start (exit status 3)
 * if the jar's internals no longer look as expected. It never falls back to the open server.
 *
 * <p>Everything is reached through reflection, so this file compiles without the jar on the
 * class path. Differences from {@code ServerRunner.main}: telemetry is never configured (so it
 * stays off whatever the flags say), and any failure exits non-zero instead of returning.
 */
public final class LoopbackDynamoDBLocal {
    private static final String LOOPBACK = "127.0.0.1";
    private static final int REFUSED = 3;

    public static void main(String[] args) throws Throwable {
        Method create;
        try {
            // Loading ServerRunner runs its static initialiser, which sets the log levels.
            create = Class.forName("software.amazon.dynamodb.services.local.main.ServerRunner")
                    .getMethod("createServerFromCommandLineArgs", String[].class);
        } catch (ReflectiveOperationException | LinkageError e) {
            refuse(e);
            return;
        }
        Object proxy;
        try {
            proxy = create.invoke(null, (Object) args);
        } catch (InvocationTargetException e) {
            throw e.getCause(); // DynamoDB Local itself refused: bad arguments, bad -dbPath, ...
        }
        try {
            bindToLoopback(proxy);
        } catch (Exception | LinkageError e) {
            refuse(e);
            return;
        }
        System.out.println("LoopbackDynamoDBLocal: binding to " + LOOPBACK + " only.");
        try {
            // ServerRunner.main calls start() (not safeStart()); start() also emits the startup
            // telemetry event when telemetry is configured, which it never is here.
            proxy.getClass().getMethod("start").invoke(proxy);
            proxy.getClass().getMethod("join").invoke(proxy);
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }

    /** Set host 127.0.0.1 on every connector of the Jetty server in the private field "server". */
    private static void bindToLoopback(Object proxy) throws Exception {
        Field serverField = proxy.getClass().getDeclaredField("server");
        serverField.setAccessible(true);
        Object jetty = serverField.get(proxy);
        Object[] connectors = (Object[]) jetty.getClass().getMethod("getConnectors").invoke(jetty);
        if (connectors.length == 0) {
            throw new IllegalStateException("the Jetty server has no connectors");
        }
        for (Object connector : connectors) {
            connector.getClass().getMethod("setHost", String.class).invoke(connector, LOOPBACK);
            Object host = connector.getClass().getMethod("getHost").invoke(connector);
            if (!LOOPBACK.equals(host)) {
                throw new IllegalStateException(connector + " kept host " + host);
            }
        }
    }

    private static void refuse(Throwable e) {
        Throwable cause = e instanceof InvocationTargetException ? e.getCause() : e;
        System.err.println("LoopbackDynamoDBLocal: cannot bind DynamoDB Local to " + LOOPBACK
                + " (has DynamoDBLocal.jar changed, or is it missing from the class path?): "
                + cause);
        System.err.println(
                "LoopbackDynamoDBLocal: refusing to start it listening on every interface.");
        System.exit(REFUSED);
    }
}
