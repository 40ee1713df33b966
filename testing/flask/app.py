from flask import Flask, request

app = Flask(__name__)

@app.route('/', methods=['GET', 'POST'])
def echo():
    if request.method == 'POST':
        return f"Received POST data: {request.data.decode('utf-8')}"
    else:
        return f"Received GET request. Query params: {request.args}"

if __name__ == '__main__':
    app.run(debug=True, host='0.0.0.0', port=8080)
