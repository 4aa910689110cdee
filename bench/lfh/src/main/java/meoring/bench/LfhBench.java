package meoring.bench;

import io.github.linuxforhealth.hl7.ConverterOptions;
import io.github.linuxforhealth.hl7.HL7ToFHIRConverter;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Messages per second of the LinuxForHealth HL7 v2 to FHIR converter on one thread, warm JVM.
 *
 * <p>Usage: {@code LfhBench [--validate] [--warmup SECONDS] [--min-seconds S] NAME=FILE...}. A
 * file holds one or more ER7 messages, one per line (segments separated by CR, as on the wire; a
 * file with a single message may also use LF or CRLF between segments). Per NAME: convert every
 * message of the file in turn for the warm-up time (JIT, template and HAPI caches), then in
 * rounds over all of them until at least min-seconds of this thread's CPU time have passed, and
 * print one line {@code lfh NAME msgs=N thread_cpu_s=.. process_cpu_s=.. wall_s=..
 * msg_per_s=..}, where msg_per_s is per second of the converting thread's CPU time (one core).
 * The converter is created once and reused, as its maintainers advise (LinuxForHealth issue #49).
 * Every output is checked to be a bundle with entries.
 */
public final class LfhBench {
  private LfhBench() {}

  public static void main(String[] args) throws Exception {
    boolean validate = false;
    double warmup = 10.0;
    double minSeconds = 5.0;
    List<String[]> inputs = new ArrayList<>();
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--validate" -> validate = true;
        case "--warmup" -> warmup = Double.parseDouble(args[++i]);
        case "--min-seconds" -> minSeconds = Double.parseDouble(args[++i]);
        default -> {
          int eq = args[i].indexOf('=');
          if (eq < 1) {
            throw new IllegalArgumentException("expected NAME=FILE, got " + args[i]);
          }
          inputs.add(new String[] {args[i].substring(0, eq), args[i].substring(eq + 1)});
        }
      }
    }
    // The converter's default output: a "collection" Bundle (HAPI FHIR R4 is a runtime dependency).
    ConverterOptions.Builder builder = new ConverterOptions.Builder();
    if (validate) {
      builder = builder.withValidateResource();
    }
    ConverterOptions options = builder.build();
    HL7ToFHIRConverter converter = new HL7ToFHIRConverter();
    ThreadMXBean threads = ManagementFactory.getThreadMXBean();
    com.sun.management.OperatingSystemMXBean os =
        (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
    for (String[] input : inputs) {
      List<String> messages = read(Path.of(input[1]));
      for (String message : messages) {
        check(converter.convert(message, options), input[0]);
      }
      long warmEnd = System.nanoTime() + (long) (warmup * 1e9);
      while (System.nanoTime() < warmEnd) {
        for (String message : messages) {
          check(converter.convert(message, options), input[0]);
        }
      }
      long count = 0;
      long cpuStart = threads.getCurrentThreadCpuTime();
      long processStart = os.getProcessCpuTime();
      long wallStart = System.nanoTime();
      long minCpu = (long) (minSeconds * 1e9);
      while (threads.getCurrentThreadCpuTime() - cpuStart < minCpu) {
        for (String message : messages) {
          check(converter.convert(message, options), input[0]);
        }
        count += messages.size();
      }
      double cpu = (threads.getCurrentThreadCpuTime() - cpuStart) / 1e9;
      double process = (os.getProcessCpuTime() - processStart) / 1e9;
      double wall = (System.nanoTime() - wallStart) / 1e9;
      System.out.printf(
          "lfh %s msgs=%d thread_cpu_s=%.3f process_cpu_s=%.3f wall_s=%.3f msg_per_s=%.1f validate=%s%n",
          input[0], count, cpu, process, wall, count / cpu, validate);
    }
  }

  private static List<String> read(Path path) throws Exception {
    String raw = Files.readString(path, StandardCharsets.UTF_8).replace("\r\n", "\n");
    List<String> out = new ArrayList<>();
    if (raw.indexOf('\r') < 0) { // one message with LF segment breaks
      out.add(raw.strip().replace('\n', '\r'));
      return out;
    }
    for (String line : raw.split("\n")) {
      if (!line.isBlank()) {
        out.add(line.strip());
      }
    }
    return out;
  }

  private static void check(String json, String name) {
    if (json == null || !json.contains("\"resourceType\"") || !json.contains("\"entry\"")) {
      throw new IllegalStateException("LinuxForHealth produced no bundle entries for " + name);
    }
  }
}
