"""The default environment serves chat as-is, on every runtime: data analysis and plots with no
settings (numpy, pandas, scipy, pillow, matplotlib rendering headless with Agg).

The first imports get 120 s: under QEMU with TCG (no usable KVM here) a fresh interpreter takes
20-40 s to import pandas and matplotlib.pyplot (font cache included); about 2.5 s on Docker.
"""

from __future__ import annotations

from testkit.runtime import Sandbox


def test_pandas_dataframe_and_a_matplotlib_png_in_the_workspace(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "import pandas as pd, matplotlib\n"
        "import matplotlib.pyplot as plt\n"
        "frame = pd.DataFrame({'x': range(5), 'y': [v * v for v in range(5)]})\n"
        "print(frame['y'].sum(), matplotlib.get_backend())\n"
        "frame.plot(x='x', y='y')\n"
        "plt.savefig('/workspace/plot.png')\n",
        timeout_s=120.0,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["30", "agg"]
    check = sandbox.run(
        "import os\n"
        "with open('/workspace/plot.png', 'rb') as f: head = f.read(8)\n"
        "print(head == b'\\x89PNG\\r\\n\\x1a\\n', os.path.getsize('/workspace/plot.png') > 1000)"
    )
    assert check.stdout.split() == ["True", "True"], check.stderr


def test_scientific_stack_imports(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "import numpy, scipy.stats, PIL.Image\n"
        "print(round(float(scipy.stats.norm.cdf(0)), 2), PIL.Image.new('RGB', (2, 2)).size)",
        timeout_s=120.0,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "0.5 (2, 2)"


def test_state_carries_a_dataframe_across_messages(sandbox: Sandbox) -> None:
    assert (
        sandbox.run(
            "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})", timeout_s=120.0
        ).exit_code
        == 0
    )
    assert sandbox.run("print(int(df['a'].mean()))").stdout.strip() == "2"
