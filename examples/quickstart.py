"""Federated linear regression across three device processes on this machine.

Each device holds private data drawn around a shared ground truth; the
coordinator runs FedAvg rounds over real HTTP and compares the result with
fitting all data in one place.
"""

import multiprocessing as mp

import numpy as np

import fedsync

TRUE_W, TRUE_B = np.array([[2.0], [-1.0], [0.5]]), 0.3
SHARDS = [(0, 50, -1.0), (1, 150, 0.0), (2, 400, 1.5)]  # (seed, samples, input shift): unequal, non-IID


def device_data(seed, n, shift):
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, size=(n, 3))
    return x, x @ TRUE_W + TRUE_B + rng.normal(0, 0.1, size=(n, 1))


def run_device(seed, n, shift, urls):
    x, y = device_data(seed, n, shift)

    def train(model):
        for _ in range(20):  # local epochs of full-batch gradient descent
            err = x @ model["w"] + model["b"] - y
            model["w"] -= 0.05 * x.T @ err / len(x)
            model["b"] -= 0.05 * err.mean(axis=0)
        return x.shape[0], {"mse": float((err**2).mean())}

    data = fedsync.FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)}, train)
    server = fedsync.serve(data, port=0, block=False)
    urls.put(server.url)
    server.join()


def main():
    ctx = mp.get_context("spawn")
    urls = ctx.Queue()
    processes = [ctx.Process(target=run_device, args=(*shard, urls), daemon=True) for shard in SHARDS]
    for p in processes:
        p.start()
    try:
        remotes = [fedsync.Remote(urls.get(timeout=60)) for _ in processes]
        data = fedsync.FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})
        with fedsync.Federated(data=data, remotes=remotes, timeout=60) as alg:
            for _ in range(15):
                result = alg.round()
                print(f"round {result.repetition:2d}: {len(result.answered)} devices, "
                      f"{data.last_merge['samples']} samples, train mse {data.last_merge['metrics']['mse']:.4f}")
        x = np.vstack([device_data(*s)[0] for s in SHARDS])
        y = np.vstack([device_data(*s)[1] for s in SHARDS])
        central, *_ = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)
        print("federated w, b:", data.model["w"].ravel().round(3), data.model["b"].round(3))
        print("central   w, b:", central[:3].ravel().round(3), central[3].round(3))
    finally:
        for p in processes:
            p.terminate()
            p.join(timeout=10)


if __name__ == "__main__":
    main()
