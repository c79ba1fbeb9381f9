#!/usr/bin/env python3
"""A TCP echo client that is not ftvm code, for the end-to-end tests and benchmarks.

  echo_client.py stream HOST PORT CONNECTIONS BYTES_PER_CONNECTION
      Streams a pseudo-random byte pattern over CONNECTIONS parallel connections and checks
      every byte comes back in order. Prints `ok BYTES SECONDS MB/s`; exits 1 on any mismatch.
  echo_client.py rtt HOST PORT COUNT
      Sends one byte at a time and waits for it; prints `rtt MEDIAN_US P99_US`.
  echo_client.py wait HOST PORT SECONDS
      Retries connecting until the service answers (or gives up after SECONDS).
  echo_client.py probe HOST PORT SECONDS
      Echoes one byte every millisecond for SECONDS; prints `probe ECHOES MAX_GAP_MS`, the
      longest time without an echo (how long a failover looked to a client).
  echo_client.py serve HOST PORT
      A threaded TCP echo server: the host-side reference the benchmark compares with.
"""
import random
import socket
import sys
import threading
import time


def pattern(seed, length):
    return random.Random(seed).randbytes(length)


def stream_one(host, port, data, seed, errors):
    length = len(data)
    try:
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = bytearray()

        def reader():
            while len(received) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        sock.sendall(data)
        thread.join()
        sock.close()
        if bytes(received) != data:
            first_bad = next((i for i, (a, b) in enumerate(zip(received, data)) if a != b), len(received))
            errors.append(f"connection {seed}: got {len(received)} of {length} bytes, first difference at {first_bad}")
    except Exception as error:  # report, do not hide
        errors.append(f"connection {seed}: {error!r}")


def stream(host, port, connections, length):
    errors = []
    patterns = [pattern(seed, length) for seed in range(connections)]
    start = time.time()
    threads = [
        threading.Thread(target=stream_one, args=(host, port, data, seed, errors)) for seed, data in enumerate(patterns)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.time() - start
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    total = connections * length
    print(f"ok {total} {seconds:.3f} {total / seconds / 1e6:.2f}")


def rtt(host, port, count):
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            print("echo returned the wrong byte")
            sys.exit(1)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    print(f"rtt {samples[len(samples) // 2]:.1f} {samples[min(len(samples) - 1, int(len(samples) * 0.99))]:.1f}")


def wait(host, port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            print("up")
            return
        except OSError:
            time.sleep(0.05)
    print(f"{host}:{port} did not answer within {seconds} s")
    sys.exit(1)


def probe(host, port, seconds):
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = time.perf_counter() + seconds
    last = time.perf_counter()
    max_gap = 0.0
    echoes = 0
    while time.perf_counter() < end:
        sock.sendall(b"p")
        if sock.recv(1) != b"p":
            print("echo returned the wrong byte")
            sys.exit(1)
        now = time.perf_counter()
        max_gap = max(max_gap, now - last)
        last = now
        echoes += 1
        time.sleep(0.001)
    print(f"probe {echoes} {max_gap * 1000:.1f}")


def serve(host, port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)

    def echo(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            conn.sendall(chunk)
        conn.close()

    print("serving", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "stream":
        stream(host, port, int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "rtt":
        rtt(host, port, int(sys.argv[4]))
    elif mode == "wait":
        wait(host, port, float(sys.argv[4]))
    elif mode == "probe":
        probe(host, port, float(sys.argv[4]))
    elif mode == "serve":
        serve(host, port)
    else:
        sys.exit(f"unknown mode {mode}")
