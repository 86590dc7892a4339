"""The screenshot of the serve page in docs/serving.md: a model served on loopback, one image chosen in the page's
file input in headless Chromium (Debian's chromium and chromium-driver: `make chromium`), the page saved as a PNG.

    .venv/bin/python benchmarks/serve_screenshot.py MODEL_DIR IMAGE --out docs/serving-page.png
"""

import argparse
import io
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--out", default="serving-page.png")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=1250)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = subprocess.Popen([sys.executable, "-m", "medprobe.cli", "serve", args.model, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 600)
        line = server.stdout.readline() if ready else ""
        if "http://" not in line:
            sys.exit(f"the server did not start: {line!r}")
        url = "http://" + line.split("http://", 1)[1].split("/", 1)[0]
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        with tempfile.TemporaryDirectory() as profile:
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                         "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
            try:
                driver.get(url + "/")
                WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "card").text.strip())
                driver.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
                WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours img")) >= 1)
                png = driver.get_screenshot_as_png()
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(30)
    # A palette PNG keeps the screenshot small enough to commit (< 200 KB).
    Image.open(io.BytesIO(png)).convert("RGB").quantize(128).save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
